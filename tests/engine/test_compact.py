"""Compact records and stubs (engine/compact.py) change memory, never a plan.

- A record reads as the wire dict it came from (lists become tuples).
- Planning from records gives the plan planning from the dicts gives.
- Planning with stubs for linked, unchanged Outlook contacts, then reading the contacts the plan
  asks for (NeedsRead) and planning again, gives the plan of the full contacts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contactsync.engine import mapping as m
from contactsync.engine.compact import (
    Compactor,
    ContentNotRead,
    GraphStub,
    Record,
    graph_stub,
)
from contactsync.engine.links import SyncMode
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot, plan_user
from contactsync.schemas.setup import UserSetup
from tests.engine.test_planner_properties import World, setups, worlds

CHECK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BC_WIRE = {
    "@odata.etag": 'W/"JzQ0O3dz"', "id": "c2ce6f44", "type": "Person",
    "displayName": "Eva Schmidt", "email": "eva@contoso.example", "privacyBlocked": False,
    "jobTitle": "Accountant", "companyName": "", "addressLine1": "808 Main Street",
    "addressLine2": "", "city": "Seattle", "state": "WA", "country": "US",
    "postalCode": "98101", "phoneNumber": "+1 425 555 7737", "mobilePhoneNumber": "",
    "website": "", "lastModifiedDateTime": "2026-11-26T01:49:29.978Z",
}  # fmt: skip
GRAPH_WIRE = {
    "@odata.etag": 'W/"EQAAAB"', "id": "AAMkAGI2", "changeKey": "EQAAAB",
    "createdDateTime": "2026-11-26T01:49:30Z", "lastModifiedDateTime": "2026-11-26T01:49:30Z",
    "displayName": "Eva Schmidt", "givenName": "Eva", "middleName": None, "surname": "Schmidt",
    "emailAddresses": [{"name": "Eva Schmidt", "address": "eva@contoso.example"},
                       {"address": "eva@home.example"}],
    "businessPhones": ["+1 425 555 7737", "+1 425 555 0000"], "mobilePhone": None,
    "businessAddress": {"street": "808 Main Street", "city": "Seattle", "state": "WA",
                        "postalCode": "98101", "countryOrRegion": "US"},
    "jobTitle": "Accountant", "companyName": None, "businessHomePage": None,
    "categories": ["Business Central", "VIP"],
    "singleValueExtendedProperties": [{"id": m.BC_ID_PROPERTY, "value": "c2ce6f44"}],
}  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dict, Record)):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_records_read_as_the_wire_dicts() -> None:
    compactor = Compactor()
    pairs = ((BC_WIRE, compactor.bc(BC_WIRE)), (GRAPH_WIRE, compactor.graph(GRAPH_WIRE)))
    for wire, record in pairs:
        assert isinstance(record, Record)
        assert _plain(record) == _plain(wire)
        assert set(record) == set(wire) and len(record) == len(wire)
        assert record.get("nope", 7) == 7 and "nope" not in record
    assert m.canonical_from_graph(compactor.graph(GRAPH_WIRE)) == m.canonical_from_graph(GRAPH_WIRE)
    assert m.canonical_from_bc(compactor.bc(BC_WIRE)) == m.canonical_from_bc(BC_WIRE)


def test_an_unknown_shape_is_kept_as_it_is() -> None:
    odd = {**GRAPH_WIRE, "birthday": "2000-01-01"}
    assert Compactor().graph(odd) is odd
    odd_bc = {**BC_WIRE, "number": "C0001"}
    assert Compactor().bc(odd_bc) is odd_bc


def test_a_stub_keeps_what_pairing_reads() -> None:
    stub = graph_stub(GRAPH_WIRE, "AAMkAGI2", "EQAAAB", "c2ce6f44")
    assert isinstance(stub, GraphStub)
    assert m.graph_email(stub) == "eva@contoso.example"
    assert m.bc_id_of(stub) == "c2ce6f44"
    assert m.graph_change_key(stub) == "EQAAAB"
    with pytest.raises(ContentNotRead):  # what it does not keep is never read as "blank"
        stub.get("displayName", "")
    assert graph_stub(GRAPH_WIRE, "AAMkAGI2", "other", "c2ce6f44") is None  # version moved
    assert graph_stub(GRAPH_WIRE, "AAMkAGI2", "EQAAAB", "another") is None  # tag differs


def _full_plan(world: World, setup: UserSetup, mode: SyncMode) -> Any:
    bc, outlook = BcSnapshot.full(world.bc.values()), OutlookSnapshot.full(world.outlook.values())
    return plan_user(bc, outlook, world.links.values(), setup, mode, force=True)


@CHECK
@given(worlds(), setups, st.sampled_from([SyncMode.FULL, SyncMode.SYNC]))
def test_records_plan_as_dicts_do(world: World, setup: UserSetup, mode: SyncMode) -> None:
    compactor = Compactor({link.bc_id: link for link in world.links.values()})
    compact = plan_user(
        BcSnapshot.full([compactor.bc(c) for c in world.bc.values()]),
        OutlookSnapshot.full([compactor.graph(c) for c in world.outlook.values()]),
        world.links.values(), setup, mode, force=True,
    )
    assert compact.groups == _full_plan(world, setup, mode).groups


@CHECK
@given(worlds(), setups, st.sampled_from([SyncMode.FULL, SyncMode.SYNC]))
def test_stubs_read_on_demand_plan_as_full_contacts(
    world: World, setup: UserSetup, mode: SyncMode
) -> None:
    by_graph_id = {link.graph_id: link for link in world.links.values()}
    contacts: dict[str, Any] = {}
    for graph_id, contact in world.outlook.items():
        link = by_graph_id.get(graph_id)
        stub = link and graph_stub(contact, graph_id, link.graph_change_key, link.bc_id)
        contacts[graph_id] = stub or contact
    bc = BcSnapshot.full(world.bc.values())
    first = plan_user(bc, OutlookSnapshot.full(contacts.values()), world.links.values(), setup,
                      mode, force=True)
    assert not first.reads.bc_ids
    for graph_id in first.reads.graph_ids:  # what the runner's Reader does: read, replace
        assert isinstance(contacts[graph_id], GraphStub)
        contacts[graph_id] = world.outlook[graph_id]
    again = plan_user(bc, OutlookSnapshot.full(contacts.values()), world.links.values(), setup,
                      mode, force=True)
    assert again.groups == _full_plan(world, setup, mode).groups
