"""Keeping glibc's allocator from giving message buffers back to the kernel after every frame.

gRPC hands each received message to Python as fresh buffers of about a frame's size (1 MiB).
With glibc's defaults a thread other than the main one frees them into its own heap, which
returns the freed pages to the kernel (``madvise``) as soon as more than two buffers' worth are
free; the next frame faults every page in again and the kernel zeroes it. An exporter receiving
an upload on its event loop paid about 240 page faults per MiB that way (a download, whose
buffers are freed in another pattern, about 65), which made uploads cost twice the CPU of
downloads.

:func:`keep_frame_buffers` raises the two thresholds involved, once per process, so buffers up
to a few frames come from the heap and a few frames' worth of free memory stays there. It does
nothing off glibc, or when the user set glibc's malloc tunables (``GLIBC_TUNABLES`` with
``glibc.malloc.``, or ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_``), which then win.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters, from glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations below this come from a heap rather than a mapping of their own: a 1 MiB frame
#: with its header and gRPC's copies of it (messages up to 64 MiB still get their own mapping).
MMAP_THRESHOLD = 4 << 20
#: Free memory a heap keeps before returning it to the kernel: a few frames, per heap.
TRIM_THRESHOLD = 16 << 20

_lock = threading.Lock()
_state: list[bool] = []


def _user_tuned() -> bool:
    return (
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
        or "MALLOC_TRIM_THRESHOLD_" in os.environ
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
    )


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") else None


def keep_frame_buffers() -> bool:
    """Set glibc's trim and mmap thresholds for frame-sized buffers (see the module); idempotent.

    Returns whether this process's allocator runs with them.
    """
    with _lock:
        if not _state:
            _state.append(_apply())
        return _state[0]


def _apply() -> bool:
    if _user_tuned():
        logger.debug("glibc malloc tunables set by the user: left as they are")
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        logger.debug("mallopt refused the frame-buffer thresholds")
    return ok
