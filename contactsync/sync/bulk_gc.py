"""Keeps Python's cyclic garbage collector off a full sync's snapshots.

Listing 100,000 contacts a side keeps millions of small objects that hold no reference cycles;
as they pile up, the collector scans them again and again (measured: a third of a 20,000
contact listing's time). So, inside `snapshots_kept_out_of_gc()`, each page's records are
frozen (`gc.freeze`) once converted, after a collection of the young objects (the cycles that
requests leave behind, their response bodies with them): later collections look at newer
objects only. Reference
counting frees frozen objects as usual; leaving unfreezes them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_active: ContextVar[bool] = ContextVar("contactsync_bulk_gc", default=False)


@contextmanager
def snapshots_kept_out_of_gc() -> Iterator[None]:
    token = _active.set(True)
    try:
        yield
    finally:
        _active.reset(token)
        gc.unfreeze()


def keep_out_of_gc() -> None:
    """Freeze what exists now (inside `snapshots_kept_out_of_gc` only; else nothing)."""
    if _active.get():
        gc.collect(1)  # the young garbage (cycles of requests) first: it is not to be kept
        gc.freeze()
