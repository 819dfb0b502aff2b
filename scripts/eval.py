"""Test a checkpoint: ``python scripts/eval.py ckpt_path=PATH [data=folder data.root=DIR]``.

Without ``data=...`` the checkpoint is tested on the data (and split) it was trained with, and
reproduces the test metrics that training reported.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from cnnlab.tasks.evaluate import evaluate

    with plain_user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
