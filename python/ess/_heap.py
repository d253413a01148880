"""Keep freed memory in the C heap while ``ess.analyze`` runs (Linux with glibc only).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
gives it back to the system with ``munmap`` when it is freed, and it trims the top of its heap as
soon as more than the trim threshold is free there. A forward pass of a sequence model allocates and
frees the same large temporaries layer after layer (transformers' reference Mamba scan: about 0.8 GB
per layer at L = 2048), so each layer pays the first touch of fresh pages again: a page fault and the
zeroing of every 4 KiB page, and on a virtual machine whose host takes freed memory back, the host's
own cost on top. On the 2-core development machine (docs/benchmarks.md, thirteenth session) the
forward pass of a 24-layer Mamba-130m-shaped model at L = 2048 took 18 s with glibc's defaults and
9 s with freed memory kept (4.8 M page faults against 0.2 M).

:func:`retained` therefore sets ``M_MMAP_MAX = 0`` (every allocation from the heap) and a trim
threshold of -1 (never trim) for its duration; on leaving the outermost ``retained`` it sets
glibc's documented defaults again (``M_MMAP_MAX = 65536``, ``M_TRIM_THRESHOLD = 128 KiB``) and calls
``malloc_trim(0)``, which returns the free memory to the system. glibc offers no way to read these
settings, so "restore" means those defaults; setting them also ends glibc's dynamic adjustment of
the mmap threshold for the rest of the process, as setting ``MALLOC_MMAP_MAX_`` would.

Nothing is changed (a no-op context) when:

* the C library is not glibc, or ``mallopt`` / ``malloc_trim`` cannot be found;
* the environment variable ``ESS_KEEP_HEAP`` is ``0``;
* the user tuned glibc's allocator already (any of ``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` set, or ``glibc.malloc`` in ``GLIBC_TUNABLES``):
  their settings stay as they are.

The settings are global to the process; nested and concurrent uses (threads running analyses at
the same time) are counted, and the defaults come back when the last one leaves. While it is active,
free memory held in the heap is not counted in the system's ``MemAvailable``: the memory gates (the
Rust core's and :func:`ess._args.gate`) call ``malloc_trim(0)`` (:func:`release`) and look again before
they refuse a request, and the CPU torch route gives the heap back before it sizes its chunks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from typing import Any, Iterator, Optional, Tuple

__all__ = ["retained", "active", "release"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's documented defaults (mallopt(3))
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"

_USER_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0
_funcs: Optional[Tuple[Any, Any]] = None
_looked_up = False


def _glibc() -> Optional[Tuple[Any, Any]]:
    """``(mallopt, malloc_trim)`` of the process's glibc, or None elsewhere (looked up once)."""
    global _funcs, _looked_up
    if _looked_up:
        return _funcs
    _looked_up = True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    _funcs = (mallopt, trim)
    return _funcs


def _wanted() -> bool:
    """Whether this process should keep its heap (see the module docstring)."""
    if os.environ.get("ESS_KEEP_HEAP", "").strip() == "0":
        return False
    if any(v in os.environ for v in _USER_VARS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return _glibc() is not None


def release() -> bool:
    """Give the free memory of the C heap back to the system now (glibc's ``malloc_trim(0)``), e.g. before
    a memory check refuses a request; whether that was possible."""
    funcs = _glibc()
    if funcs is None:
        return False
    funcs[1](0)
    return True


def active() -> bool:
    """Whether a :func:`retained` context has changed the allocator's settings right now."""
    return _depth > 0


@contextlib.contextmanager
def retained() -> Iterator[bool]:
    """Keep freed memory in the heap for the duration (see the module docstring). Yields whether the
    allocator's settings were changed (False where this is a no-op)."""
    global _depth
    if not _wanted():
        yield False
        return
    mallopt, trim = _glibc()  # type: ignore[misc]
    with _lock:
        if _depth == 0:
            # the threshold first, so that nothing mapped from here on is trimmed away
            mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
            mallopt(_M_MMAP_MAX, 0)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                trim(0)
