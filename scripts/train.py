"""Train a classifier: ``python scripts/train.py model=resnet18_ft data=folder data.root=DIR``.

Any config value can be overridden on the command line; ``-m`` sweeps over comma-separated
values (``python scripts/train.py -m model=simple_cnn,simple_cnn_bn``), ``hparams_search=...``
runs an Optuna search, ``ckpt_path=<run>/checkpoints/last.ckpt`` continues a stopped run.
See conf/train.yaml and README.md.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cnnlab.tasks.train import optimized_value, train

    with plain_user_errors(record_in_job_log=False):  # train records its failures itself
        # The value a Hydra sweeper (e.g. Optuna) optimises.
        return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    main()
