"""Peak memory of this process, and giving freed memory back to the operating system.

glibc keeps freed heap pages for later reuse. Training allocates activations of a different shape
every step, so those pages pile up and the resident size creeps up by gigabytes over an epoch while
the live tensors stay the same size. ``malloc_trim(0)`` every few steps returns them. Where there is
no glibc (macOS, musl) it does nothing; GPU memory is not affected either way.
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
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Return freed heap pages to the operating system (glibc only)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
