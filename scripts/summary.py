"""Print a network's architecture, layer output shapes and parameter counts:
``python scripts/summary.py model=resnet18_ft [input_size=224]`` or ``ckpt_path=PATH``.

Pretrained weights are not needed (or fetched): they change no shape or count. See conf/summary.yaml.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="summary")
def main(cfg: DictConfig) -> None:
    from cnnlab.tasks.summary import summary

    with plain_user_errors(record_in_job_log=False):  # it writes no run folder, so no job log: the console has the error
        summary(cfg)


if __name__ == "__main__":
    main()
