"""Where tunelab keeps its own state: a cache of the embedded models it converts once (SmolLM2, GGUF to safetensors)."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home() -> Path:
    """``$TUNELAB_HOME``, or ``~/.tunelab``. Tests point it at a temporary folder."""
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".tunelab")


def model_cache() -> Path:
    """``models/`` under the home folder: one folder per converted model."""
    return tunelab_home() / "models"
