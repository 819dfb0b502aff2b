"""Logging filters that Hydra's job logging config (``conf/hydra/default.yaml``) attaches to its handlers."""

from __future__ import annotations

import logging

from cnnlab.utils.config import process_rank


class CnnlabLinesFromRankZero(logging.Filter):
    """Pass cnnlab's lines below ERROR from global rank zero only; every other line passes.

    Under DDP every process runs the task and loads the data, so each data line (decoded,
    cached, the split sizes) and each setting line would appear once per process. A process's
    errors still show in every process, and Lightning's own lines are left to Lightning.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is shown."""
        if record.levelno >= logging.ERROR or not record.name.startswith("cnnlab"):
            return True
        return process_rank() == 0
