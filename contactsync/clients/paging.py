"""Server-driven paging with the next page already requested, shared by both clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

P = TypeVar("P")  # a page as the client receives it
T = TypeVar("T")  # one item of a page


async def prefetched_pages(
    first: Callable[[], Awaitable[P]],
    next_page: Callable[[P], Awaitable[P] | None],
    items_of: Callable[[P], list[T]],
) -> AsyncGenerator[list[T], None]:
    """Each page's items, following `next_page` (None after the last page). The next page is
    requested before this one is handed over, so the service serves it while the caller works
    on this one (a caller converting a long page gives the loop turns: sync/full.py)."""
    page = await first()
    while True:
        request = next_page(page)
        upcoming = asyncio.ensure_future(request) if request is not None else None
        items = items_of(page)
        del page  # only the items stay referenced while the caller works on them
        try:
            yield items
        except BaseException:
            if upcoming is not None:
                upcoming.cancel()
            raise
        if upcoming is None:
            return
        page = await upcoming
