"""Logging filters that cnnlab's job logging config (``conf/hydra/job_logging/cnnlab.yaml``) attaches to its handlers."""

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


JOB_LOG_ONLY = {"job_log_only": True}  # ``extra=`` of a record meant for the job's log file, not the console


class JobLogOnly(logging.Filter):
    """Keep records logged with ``extra=JOB_LOG_ONLY`` off the handler it is attached to (the console).

    The training task records a single run's failure in the job log, where
    ``scripts/summarize.py`` reads it; on the console the error itself follows as the script
    ends, so the record would say it twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is shown."""
        return not getattr(record, "job_log_only", False)


class LightningChatter(logging.Filter):
    """Drop two kinds of Lightning's INFO lines that say nothing about the run.

    Its product tips ("💡 Tip: For seamless cloud logging ..., try installing litlogger"), and
    its note that the Trainer was given a ModelSummary callback, which cnnlab's config always
    gives it (conf/callbacks/default.yaml). Shown on every run; Lightning's other lines pass.
    """

    CHATTER = ("💡 Tip:", "Trainer already configured with model summary callbacks")

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is shown."""
        if record.levelno != logging.INFO or not record.name.startswith("lightning."):
            return True
        return not str(record.msg).startswith(self.CHATTER)
