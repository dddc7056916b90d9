"""The content a link keeps (engine/synced.py): a side comes back only at the link's very
version, with what the planner reads, and never when a user's filter needs more than it holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from contactsync.engine import mapping as m
from contactsync.engine.compact import graph_stub
from contactsync.engine.links import Link
from contactsync.engine.synced import (
    bc_at_link,
    bc_side,
    outlook_at_link,
    outlook_side,
    synced_text,
)

BC = {"@odata.etag": 'W/"e1"', "id": "b1", "type": "Person", "displayName": "Eva Lind",
      "email": "eva@contoso.example", "city": "Seattle", "addressLine1": "", "addressLine2": "2nd",
      "privacyBlocked": False, "lastModifiedDateTime": "2026-01-01T00:00:00Z"}
OUTLOOK = {"@odata.etag": 'W/"k1"', "id": "g1", "changeKey": "k1",
           "createdDateTime": "2026-01-01T00:00:00Z",
           "emailAddresses": [{"address": "eva@contoso.example", "name": "Eva"},
                              {"address": "eva@home.example", "name": "home"}],
           "businessPhones": [], "categories": ["Business Central", "VIP"],
           "singleValueExtendedProperties": [{"id": m.BC_ID_PROPERTY, "value": "b1"}]}
def synced_content(bc: Mapping[str, Any], outlook: Mapping[str, Any]) -> str | None:
    return synced_text(bc_side(bc), outlook_side(outlook))


LINK = Link("u", "b1", "g1", bc_etag='W/"e1"', graph_change_key="k1",
            bc_modified=datetime(2026, 1, 1, tzinfo=UTC))


def test_both_sides_come_back_at_the_links_versions() -> None:
    kept = synced_content(BC, OUTLOOK)
    bc = bc_at_link(LINK, kept, ("city",))
    assert bc is not None
    assert {k: bc[k] for k in BC if k != "lastModifiedDateTime"} == {
        k: v for k, v in BC.items() if k != "lastModifiedDateTime"}
    outlook = outlook_at_link(LINK, kept)
    assert outlook is not None
    assert m.graph_change_key(outlook) == "k1" and outlook["@odata.etag"] == 'W/"k1"'
    assert m.bc_id_of(outlook) == "b1"
    assert outlook["emailAddresses"] == OUTLOOK["emailAddresses"]
    assert outlook["categories"] == ["Business Central", "VIP"]
    assert m.canonical_from_graph(outlook)["display_name"] == "Eva Lind"


def test_a_side_at_another_version_or_a_filter_it_cannot_answer_is_read() -> None:
    kept = synced_content(BC, OUTLOOK)
    moved = dataclasses.replace(LINK, bc_etag='W/"e2"', graph_change_key="k2")
    assert bc_at_link(moved, kept) is None and outlook_at_link(moved, kept) is None
    assert bc_at_link(LINK, kept, ("number",)) is None, "the filter names what it does not hold"
    assert bc_at_link(LINK, None) is None and outlook_at_link(LINK, None) is None


def test_a_full_syncs_stub_keeps_no_outlook_side() -> None:
    stub = graph_stub(OUTLOOK, "g1", "k1", "b1")
    assert stub is not None
    kept = synced_content(BC, stub)
    assert outlook_at_link(LINK, kept) is None
    assert bc_at_link(LINK, kept) is not None
