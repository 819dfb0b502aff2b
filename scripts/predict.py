"""Classify image files: ``python scripts/predict.py ckpt_path=PATH inputs=FILE_OR_DIR``.

Writes ``predictions.csv`` and ``predictions.json`` (file, predicted class, probability, top-k)
into the run folder. A file that cannot be read as an image is reported by name and the
others are still classified; the exit status is then 2 (1 means the run itself failed). See conf/predict.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()

SOME_FILES_FAILED = 2  # distinct from 1, which Python and Hydra use for an error that stopped the run


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from cnnlab.tasks.predict import predict

    with plain_user_errors():
        results = predict(cfg)
    if results["failed"]:
        sys.exit(SOME_FILES_FAILED)


if __name__ == "__main__":
    main()
