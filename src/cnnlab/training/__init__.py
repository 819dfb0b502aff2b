"""Lightning glue: the LightningModule, its factory and the callbacks."""

from cnnlab.utils.library_warnings import ignore_unactionable_library_warnings

# On import rather than in each task: a spawned DDP worker imports this package (to unpickle the
# LightningModule) but runs no task.
ignore_unactionable_library_warnings()
