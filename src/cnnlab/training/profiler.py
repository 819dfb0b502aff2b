"""The Trainer's default profiler: none, at no cost per hook call."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = nullcontext()


class NoProfiler(PassThroughProfiler):
    """Profiles nothing, like Lightning's default ``PassThroughProfiler``, but cheaper.

    Lightning wraps every hook call in ``profiler.profile(name)``: over 80 calls per training
    step with cnnlab's callbacks. The pass-through profiler answers each with a new
    generator-based context manager (six Python calls); this returns one shared
    ``nullcontext``. Together with ``ImageClassifier``'s cheaper hook bookkeeping that saved
    about 0.1 ms of a ~20 ms bf16 step on the 2-core dev CPU: the same time is a larger share
    where steps are shorter (a GPU).

    ``trainer.profiler=simple`` (or ``advanced``, ``pytorch``) swaps in one of Lightning's real
    profilers.
    """

    def profile(self, action_name: str) -> AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING
