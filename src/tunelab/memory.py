"""Peak memory of this process, and giving freed heap pages back to the operating system.

glibc keeps freed heap pages for later reuse. Training allocates activations of a different shape
every step, so those pages pile up and the resident size creeps up by gigabytes over an epoch while
the live tensors stay the same size. ``release_memory()`` (``malloc_trim(0)``) returns them; the
trainer calls it every few steps and evaluation before each arm. glibc only: elsewhere it does
nothing, and GPU memory is not affected. How large blocks are mapped is a training speed-up and
lives with the others in ``tunelab/modeling/fast/memory.py``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if os.uname().sysname == "Darwin" else peak / 1024


@functools.cache
def libc_function(name: str):
    """A function of the C library (glibc), or None where there is none by that name."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Return freed heap pages to the operating system (glibc only)."""
    trim = libc_function("malloc_trim")
    if trim is not None:
        trim(0)
