"""Errors cnnlab raises for bad input. Each message names the problem and the fix."""


class CnnlabError(Exception):
    """Base class of the errors a user can act on."""


class DatasetNotFoundError(CnnlabError, FileNotFoundError):
    """A dataset is not where the config says, and could not be fetched."""


class CorruptImageError(CnnlabError, ValueError):
    """One or more image files could not be decoded."""


class WeightsUnavailableError(CnnlabError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


class CheckpointError(CnnlabError, ValueError):
    """A checkpoint is missing, unreadable, or belongs to another model."""


class RunDirectoryInUseError(CnnlabError, FileExistsError):
    """A run would write into a folder that already holds another run's results."""
