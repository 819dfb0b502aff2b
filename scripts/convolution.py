"""The convolution walk-through: ``python scripts/convolution.py [image=PATH]``.

Prints the textbook example (the 5x5 image 1..25 and the Sobel x kernel, by hand) and writes
``convolution.png``: an image through Sobel x/y, blur, sharpen and a max-pool step. The NumPy
code is in src/cnnlab/visualize/convolution.py. See conf/convolution.yaml.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="convolution")
def main(cfg: DictConfig) -> None:
    from cnnlab.tasks.convolution import convolution_walkthrough

    with plain_user_errors():
        convolution_walkthrough(cfg)


if __name__ == "__main__":
    main()
