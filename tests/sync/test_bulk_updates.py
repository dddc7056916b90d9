"""BC changes for one user reach Outlook as one `$batch` of PATCHes (sync/executor.py), through
the real clients and emulators: what lands, what a person's edit meanwhile costs, what a
throttled item or a failed batch costs, and that nothing is written twice where a user sees it."""

from __future__ import annotations

from typing import Any

import pytest

from contactsync.engine.planner import BcSnapshot
from contactsync.store.records import AuditKind
from contactsync.sync.runner import SyncReport, apply_changes
from tests.sync.conftest import MAILBOX, World
from tests.sync.test_near_real_time import _by_email, _linked_people, _requests

BATCH = ("POST", "/v1.0/$batch")
PATCH_ONE = ("PATCH", "/v1.0/users/{u}/contacts/{c}")


def _routes(world: World) -> dict[tuple[str, str], int]:
    return {(r["method"], r["route"]): int(r["count"])
            for r in world.emulators.graph.counters_snapshot()["by_route"] if r["count"]}


async def _retitle_in_bc(world: World, people: list[dict[str, Any]], title: str) -> SyncReport:
    """Each person's job title changed in BC, applied as the change feed hands it over."""
    changed = [world.emulators.bc.update_contact(p["id"], {"jobTitle": f"{title} {n}"})
               for n, p in enumerate(people)]
    return await apply_changes(world.setup(), graph=world.graph, bc=world.bc, store=world.store,
                               bc_changes=BcSnapshot.changes(changed), sessions=world.sessions)


async def _titles(world: World) -> dict[str, str]:
    folder = _by_email(await world.folder())
    return {email: str(c.get("jobTitle") or "") for email, c in folder.items()}


def _expected(people: list[dict[str, Any]], title: str) -> dict[str, str]:
    return {p["email"]: f"{title} {n}" for n, p in enumerate(people)}


async def _nothing_left_to_write(world: World) -> None:
    """The links hold the final versions: Outlook's delta (our own writes) costs no write."""
    again = await apply_changes(world.setup(), graph=world.graph, bc=world.bc, store=world.store,
                                read_outlook_delta=True, sessions=world.sessions)
    assert again.execution is None or sum(again.execution.writes.values()) == 0


async def test_several_bc_changes_go_as_one_batch_and_a_single_one_as_a_patch(
    world: World,
) -> None:
    people = await _linked_people(world, 6)
    world.emulators.graph.reset_counters()
    single = await _retitle_in_bc(world, people[:1], "Solo")
    assert _routes(world) == {PATCH_ONE: 1}, "one update: a plain PATCH, no $batch"
    assert single.execution is not None and single.execution.writes["updated_outlook"] == 1

    world.emulators.graph.reset_counters()
    report = await _retitle_in_bc(world, people, "Bulk")

    assert report.execution is not None and report.execution.failures == []
    assert report.execution.writes["updated_outlook"] == 6
    assert _routes(world) == {BATCH: 1, PATCH_ONE: 6}, "one $batch holding the six PATCHes"
    assert await _titles(world) == _expected(people, "Bulk")
    # The batch's answers are the versions known now: the next changes need no read either.
    world.emulators.graph.reset_counters()
    await _retitle_in_bc(world, people, "Next")
    assert _routes(world) == {BATCH: 1, PATCH_ONE: 6}
    assert await _titles(world) == _expected(people, "Next")
    await _nothing_left_to_write(world)


@pytest.mark.parametrize("stale_status", [412, 409])
async def test_a_person_editing_one_contact_meanwhile_costs_that_pair_a_reread_and_bc_wins(
    world: World, stale_status: int
) -> None:
    world.emulators.graph.config.stale_change_key_status = stale_status  # both readings
    people = await _linked_people(world, 5)
    graph_id = _by_email(await world.folder())[people[2]["email"]]["id"]
    original = world.graph.update_contacts
    edits = 0

    async def person_edits_first(mailbox: str, updates: Any) -> Any:
        nonlocal edits
        if edits == 0:  # after our read, before our write
            edits += 1
            world.emulators.graph.person_update_contact(
                MAILBOX, graph_id, {"jobTitle": "Outlook title", "department": "Sales"})
        return await original(mailbox, updates)

    world.graph.update_contacts = person_edits_first  # type: ignore[method-assign]
    world.emulators.graph.reset_counters()

    report = await _retitle_in_bc(world, people, "BC")

    assert edits == 1
    assert report.execution is not None and report.execution.failures == []
    assert await _titles(world) == _expected(people, "BC"), "BC is master; the others landed"
    routes = _routes(world)
    assert routes[BATCH] == 1 and routes[PATCH_ONE] == 6, "the stale PATCH refused, then again"
    audits = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT)
    assert [a.details["outlook"].get("job_title") for a in audits] == ["Outlook title"]
    await _nothing_left_to_write(world)


async def test_a_contact_deleted_in_outlook_meanwhile_is_read_again_and_recreated(
    world: World,
) -> None:
    """Its PATCH in the batch answers 404: the pair is read again (gone) and, BC being
    master, the contact is created again from BC; the others land."""
    people = await _linked_people(world, 4)
    gone = _by_email(await world.folder())[people[1]["email"]]["id"]
    original = world.graph.update_contacts

    async def person_deletes_first(mailbox: str, updates: Any) -> Any:
        world.emulators.graph.person_delete_contact(MAILBOX, gone)
        world.graph.update_contacts = original  # type: ignore[method-assign]
        return await original(mailbox, updates)

    world.graph.update_contacts = person_deletes_first  # type: ignore[method-assign]
    report = await _retitle_in_bc(world, people, "Kept")

    assert report.execution is not None and report.execution.failures == []
    assert await _titles(world) == _expected(people, "Kept"), "recreated with BC's values"
    assert gone not in {c["id"] for c in await world.folder()}
    assert report.execution.writes["created_in_outlook"] == 1
    await _nothing_left_to_write(world)


async def test_a_throttled_item_goes_again_alone(world: World) -> None:
    people = await _linked_people(world, 5)
    world.emulators.graph.reset_counters()
    world.emulators.graph.add_fault(kind="status", status=429, count=1, method="PATCH",
                                    route="/contacts/", retry_after=1)

    report = await _retitle_in_bc(world, people, "Throttled")

    assert report.execution is not None and report.execution.failures == []
    assert _routes(world) == {BATCH: 2, PATCH_ONE: 6}, "the 429'd PATCH went again, alone"
    assert await _titles(world) == _expected(people, "Throttled")
    await _nothing_left_to_write(world)


@pytest.mark.parametrize(("kind", "status"), [
    ("status", 503), ("status", 424), ("status", 429), ("drop_response", 504)])
async def test_a_failed_batch_goes_again_and_writes_nothing_twice_that_a_user_sees(
    world: World, kind: str, status: int
) -> None:
    """A batch refused whole (503, 424, 429) goes again. One whose PATCHes landed but whose
    answer was lost goes again too: our own writes answer 412, the pairs are read again and
    found as BC has them: no second write, no conflict audited, nothing pushed back to BC."""
    people = await _linked_people(world, 5)
    world.emulators.graph.reset_counters()
    world.emulators.bc.reset_counters()
    world.emulators.graph.add_fault(kind=kind, status=status, count=1, route="/$batch",
                                    retry_after=1)

    report = await _retitle_in_bc(world, people, "Again")

    assert report.execution is not None and report.execution.failures == []
    assert await _titles(world) == _expected(people, "Again")
    assert _routes(world)[BATCH] == 2
    assert _routes(world)[PATCH_ONE] == (10 if kind == "drop_response" else 5)
    assert world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT) == []
    world.emulators.bc.reset_counters()
    await _nothing_left_to_write(world)
    assert "PATCH" not in _requests(world, "bc")
