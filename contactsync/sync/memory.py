"""Gives a finished full sync's freed memory back to the system (glibc only).

A full sync of 100,000 contacts frees a few hundred MB of records, pages and plan at its end.
Python returns its own emptied arenas, but what went through malloc (response bodies, big
lists) can stay in glibc's free lists, counted in the RSS of a long-lived process
(`contactsync run`) until the next run happens to reuse it. `malloc_trim(0)` releases the free
pages at the top and inside the heaps; it costs a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


def release_free_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
