"""Feature maps and Grad-CAM for one image: ``python scripts/visualize.py ckpt_path=PATH image=PATH_OR_INDEX``.

Writes ``feature_maps.png`` (the first 16 channels of ``layer=``, the first conv by default)
and ``gradcam.png`` (for the predicted class, or ``target_class=``) into the run folder. See
conf/visualize.yaml.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.errors import plain_user_errors
from cnnlab.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="visualize")
def main(cfg: DictConfig) -> None:
    from cnnlab.tasks.visualize import visualize

    with plain_user_errors():
        visualize(cfg)


if __name__ == "__main__":
    main()
