"""Where tunelab keeps its own state: registry, audit log, keys and the model cache."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home() -> Path:
    """``$TUNELAB_HOME``, or ``~/.tunelab``. Tests point it at a temporary folder."""
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".tunelab")


def model_cache() -> Path:
    return tunelab_home() / "models"
