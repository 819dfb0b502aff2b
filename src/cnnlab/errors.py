"""Errors cnnlab raises for bad input. Each message names the problem and the fix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


class InputNotFoundError(CnnlabError, FileNotFoundError):
    """An input file or folder named on the command line does not exist."""


class LayerNotFoundError(CnnlabError, ValueError):
    """A layer named in the config is not a layer of the network."""


class ConfigValueError(CnnlabError, ValueError):
    """A config value names something that does not exist (a metric, a folder)."""


def user_error(error: BaseException) -> CnnlabError | None:
    """The :class:`CnnlabError` that ``error`` is or wraps (a library may have chained it), else None."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, CnnlabError):
        cause = cause.__cause__
    return cause


@contextlib.contextmanager
def plain_user_errors() -> Iterator[None]:
    """Re-raise a :class:`CnnlabError` as itself when a library wrapped it.

    ``hydra.utils.instantiate`` wraps whatever a constructor raises in an
    ``InstantiationException`` whose text is the error's repr, newlines escaped. Our messages
    are written to be read, so the scripts show them as they are.
    """
    try:
        yield
    except CnnlabError:
        raise
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        raise cause.with_traceback(None) from None
