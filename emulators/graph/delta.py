"""Contact delta per folder (reference 2).

A round is a list of contact ids fixed when the round starts (the whole folder for a first
call, "changed since the token's sequence number" for a later one), served page by page. Items
are rendered as they are when the page is served: a contact deleted meanwhile comes out as
`@removed`, an update folded in. Replays are allowed, as in Graph. Tokens live in a bounded
table; evicted or expired ones answer 410 `syncStateNotFound`, like Outlook's cache-bound
tokens.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .model import CONTACT_TYPE, GraphError, dumps, id_in_form
from .state import GraphState


@dataclass
class _Round:
    user_id: str
    folder_id: str
    ids: list[str]
    upto: int  # sequence number the next deltaLink continues from
    select: list[str] | None
    page_size: int  # from the first call's Prefer; a later Prefer overrides it


@dataclass
class _Token:
    user_id: str
    folder_id: str
    since: int
    select: list[str] | None


# "Use delta query to track changes in Microsoft Graph data" (learn.microsoft.com/graph/
# delta-query-overview, "Token duration"): an expired token gives "a 40X-series error with error
# codes such as syncStateNotFound". 410 Gone by default; 400 (what identity resources answer,
# devblogs "Duration of change tracking tokens") or 404 with the same code as an injected fault.
EXPIRED_STATUSES = (400, 404, 410)


def _expired(status: int = 410) -> GraphError:
    return GraphError(
        status,
        "syncStateNotFound",
        "The sync state generation is not found. Start a new sync without a delta token.",
    )


class DeltaTracker:
    def __init__(self, state: GraphState, max_tokens: int = 200_000, max_rounds: int = 20_000):
        self.state = state
        self.max_tokens = max_tokens
        self.max_rounds = max_rounds
        self._tokens: dict[str, _Token] = {}
        self._rounds: dict[str, _Round] = {}
        self.expired_status = 410  # the status of the 40X an unknown token gets

    def expire(
        self, user_id: str | None = None, folder_id: str | None = None, status: int | None = None
    ) -> int:
        """Forget delta and skip tokens (all, one mailbox's, or one folder's); with `status`,
        unknown tokens answer that 40X from now on."""
        if status is not None:
            if status not in EXPIRED_STATUSES:
                raise ValueError(f"an expired delta token answers one of {EXPIRED_STATUSES}")
            self.expired_status = status
        n = 0
        tables: tuple[dict[str, Any], ...] = (self._tokens, self._rounds)
        for table in tables:
            for key, t in list(table.items()):
                if (user_id is None or t.user_id == user_id) and (
                    folder_id is None or t.folder_id == folder_id
                ):
                    del table[key]
                    n += 1
        return n

    @staticmethod
    def _bounded(table: dict[str, Any], limit: int) -> None:
        while len(table) > limit:  # oldest first: dicts keep insertion order
            del table[next(iter(table))]

    def page(
        self,
        *,
        user_id: str,
        folder_id: str,
        link_base: str,
        context: str,
        skiptoken: str | None,
        deltatoken: str | None,
        select: list[str] | None,
        page_size: int | None,
        default_page_size: int,
        immutable: bool = False,
    ) -> bytes:
        folder = self.state.folders.get(folder_id)
        if skiptoken is not None:
            try:
                rid, pos_s = base64.urlsafe_b64decode(skiptoken.encode()).decode().split(":")
                pos = int(pos_s)
            except Exception as exc:  # any malformed token is an unknown sync state
                raise _expired(self.expired_status) from exc
            rnd = self._rounds.get(rid)
            if rnd is None or rnd.folder_id != folder_id:
                raise _expired(self.expired_status)
        else:
            if folder is None:
                raise _expired(self.expired_status)
            if deltatoken is not None:
                tok = self._tokens.get(deltatoken)
                if tok is None or tok.folder_id != folder_id:
                    raise _expired(self.expired_status)
                ids = self.state.changed_since(folder, tok.since)
                select = tok.select
            else:
                ids = list(folder.order())
            rid = secrets.token_urlsafe(12)
            rnd = _Round(
                user_id, folder_id, ids, self.state.seq, select, page_size or default_page_size
            )
            self._rounds[rid] = rnd
            self._bounded(self._rounds, self.max_rounds)
            pos = 0
        if page_size:
            rnd.page_size = page_size
        page_size = rnd.page_size
        chunk = rnd.ids[pos : pos + page_size]
        parts = [self._item(cid, rnd, immutable) for cid in chunk]
        end = pos + page_size >= len(rnd.ids)
        if end:
            token = secrets.token_urlsafe(24)
            self._tokens[token] = _Token(rnd.user_id, rnd.folder_id, rnd.upto, rnd.select)
            self._bounded(self._tokens, self.max_tokens)
            self._rounds.pop(rid, None)
            link_key, link = "@odata.deltaLink", f"{link_base}?$deltatoken={quote(token)}"
        else:
            nxt = base64.urlsafe_b64encode(f"{rid}:{pos + page_size}".encode()).decode()
            link_key, link = "@odata.nextLink", f"{link_base}?$skiptoken={quote(nxt)}"
        return (
            b'{"@odata.context":'
            + dumps(context)
            + b',"value":['
            + b",".join(parts)
            + b'],"'
            + link_key.encode()
            + b'":'
            + dumps(link)
            + b"}"
        )

    def _item(self, cid: str, rnd: _Round, immutable: bool) -> bytes:
        c = self.state.contacts.get(cid)
        if c is None or c.folder_id != rnd.folder_id:
            return dumps(
                {
                    "@odata.type": CONTACT_TYPE,
                    "id": id_in_form(cid, immutable),
                    "@removed": {"reason": "deleted"},
                }
            )
        if rnd.select:
            return dumps({"@odata.type": CONTACT_TYPE, **c.view(rnd.select, None, immutable)})
        return b'{"@odata.type":"' + CONTACT_TYPE.encode() + b'",' + c.raw(immutable)[1:]
