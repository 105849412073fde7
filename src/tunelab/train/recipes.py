"""The recipe that trains each task, and the one entry point that runs it and records how it ended.

Which shared settings each task acts on is the table ``TASKS`` in tunelab/config.py, where the
config validator refuses the rest; this file maps the same tasks to their recipe functions.
"""

from __future__ import annotations

from collections.abc import Callable

from tunelab.config import RunConfig
from tunelab.runs.folder import RunFolder
from tunelab.train.classification import run_classification
from tunelab.train.distill import run_distill
from tunelab.train.pretrain import run_pretrain
from tunelab.train.seq2seq import run_seq2seq
from tunelab.train.sft import run_sft

RECIPES: dict[str, Callable[..., dict]] = {
    "sft": run_sft,
    "pretrain": run_pretrain,
    "classification": run_classification,
    "seq2seq": run_seq2seq,
    "distill": run_distill,
}


def train(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """Run the task's recipe; a run that stops on an error or Ctrl-C is recorded as failed or killed in its
    status.json (a run killed outright shows as failed when read: its process is gone)."""
    try:
        return RECIPES[config.task](config, resume=resume, overwrite=overwrite, callbacks=callbacks)
    except BaseException as exc:
        folder = RunFolder(config.run_dir)
        if folder.owned_by_this_process():  # never an older run whose folder this one refused to replace
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted" if interrupted else (str(exc).splitlines() or [type(exc).__name__])[0]
            folder.mark_ended("killed" if interrupted else "failed", reason)
        raise
