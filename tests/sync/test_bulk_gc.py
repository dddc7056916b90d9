"""The snapshots' freeze (sync/bulk_gc.py) ends with the full sync, and does nothing outside."""

from __future__ import annotations

import gc

import pytest

from contactsync.sync.bulk_gc import keep_out_of_gc, snapshots_kept_out_of_gc


def test_freezes_only_inside_and_unfreezes_on_the_way_out() -> None:
    keep_out_of_gc()
    assert gc.get_freeze_count() == 0
    with snapshots_kept_out_of_gc():
        keep_out_of_gc()
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), snapshots_kept_out_of_gc():
        keep_out_of_gc()
        raise RuntimeError("a failed read")
    assert gc.get_freeze_count() == 0
