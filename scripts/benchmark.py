"""Benchmark the training paths side by side: ``python scripts/benchmark.py [data=folder data.root=DIR]``.

Prints a table and writes benchmark.json and benchmark.md into the run folder. See conf/benchmark.yaml.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from cnnlab.tasks.benchmark import benchmark

    with plain_user_errors():
        benchmark(cfg)


if __name__ == "__main__":
    main()
