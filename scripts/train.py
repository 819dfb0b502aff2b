"""Train a classifier: ``python scripts/train.py model=resnet18_ft data=folder data.root=DIR``.

Any config value can be overridden on the command line; ``-m`` sweeps over comma-separated
values (``python scripts/train.py -m model=simple_cnn,simple_cnn_bn``). See conf/train.yaml.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cnnlab.tasks.train import train

    with plain_user_errors():
        results = train(cfg)
    # The value a Hydra sweeper (e.g. Optuna) optimises.
    metric = cfg.get("optimized_metric")
    return results.get(metric) if metric else None


if __name__ == "__main__":
    main()
