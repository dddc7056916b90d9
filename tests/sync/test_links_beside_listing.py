"""A full sync loads the user's links in a worker thread while BC serves the listing's first
page (runner._links_beside_first_page): every page still arrives, in order, and a failure on
either side surfaces as itself, with the listing's prefetched request dropped."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from contactsync.engine.links import Link
from contactsync.sync.full import _links_beside_first_page

LINKS = [Link("u", "b1", "g1")]


async def _pages(n: int, log: list[str], fail_at: int | None = None
                 ) -> AsyncGenerator[list[Any], None]:
    try:
        for i in range(n):
            if i == fail_at:
                raise ConnectionError("BC went away")
            yield [{"id": f"b{i}"}]
    finally:
        log.append("closed")


async def _all(pages: Any) -> list[Any]:
    return [page async for page in pages]


def _loader(threads: list[str]) -> Any:
    """A links load that notes the thread it ran in."""

    def load() -> list[Link]:
        threads.append(threading.current_thread().name)
        return LINKS

    return load


async def test_every_page_arrives_in_order_and_the_links_come_from_another_thread() -> None:
    threads: list[str] = []
    links, pages = await _links_beside_first_page(_pages(3, []), _loader(threads),
                                                  in_thread=True)
    assert links == LINKS
    assert await _all(pages) == [[{"id": "b0"}], [{"id": "b1"}], [{"id": "b2"}]]
    assert threads and threads[0] != threading.current_thread().name


async def test_an_empty_listing_gives_no_page() -> None:
    links, pages = await _links_beside_first_page(_pages(0, []), lambda: LINKS, in_thread=True)
    assert links == LINKS and await _all(pages) == []


async def test_a_store_that_shares_one_connection_loads_in_the_loops_thread() -> None:
    threads: list[str] = []
    _, pages = await _links_beside_first_page(_pages(2, []), _loader(threads), in_thread=False)
    assert threads == [threading.current_thread().name]
    assert len(await _all(pages)) == 2


async def test_a_failing_bc_read_surfaces_after_the_links_load_ended() -> None:
    ended = threading.Event()

    def load() -> list[Link]:
        ended.wait(0.2)
        ended.set()
        return LINKS

    with pytest.raises(ConnectionError, match="BC went away"):
        await _links_beside_first_page(_pages(3, [], fail_at=0), load, in_thread=True)
    assert ended.is_set()  # no thread left running behind the failure


async def test_a_failing_links_load_closes_the_listing() -> None:
    log: list[str] = []

    def load() -> list[Link]:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        await _links_beside_first_page(_pages(3, log), load, in_thread=True)
    assert log == ["closed"]


def test_only_an_in_memory_store_keeps_the_load_in_the_loops_thread(tmp_path: Any) -> None:
    from contactsync.store import Store

    with Store.open("sqlite://") as memory, Store.open(f"sqlite:///{tmp_path}/s.db") as file:
        assert not memory.threads_may_share  # one shared connection
        assert file.threads_may_share
