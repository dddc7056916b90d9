"""The state store's repositories, against SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from contactsync.engine.links import Link, LinkOrigin
from contactsync.schemas.setup import OutlookDeletePolicy, UserSetup
from contactsync.store import (
    AuditKind,
    AuditRecord,
    FolderTakenError,
    LinkConflictError,
    SetupExistsError,
    SetupNotFoundError,
    Store,
    Subscription,
    SubscriptionService,
)
from tests.store.legacy import write_v2_setups

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def setup_for(user_id: str, **fields: object) -> UserSetup:
    return UserSetup.model_validate({"user_id": user_id, "mailbox": f"{user_id}@x.test", **fields})


def link_for(user_id: str, n: int, **fields: object) -> Link:
    base = Link(
        user_id=user_id,
        bc_id=f"bc-{n:06d}",
        graph_id=f"AAMkAG-{n:06d}=",
        bc_etag=f'W/"JzQ0O{n}"',
        bc_modified=T0 + timedelta(seconds=n),
        graph_change_key=f"ck{n}",
        synced_hash=f"{n:064x}",
        origin=LinkOrigin.BC,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


# --- user setups -------------------------------------------------------------------------------


def test_setup_add_get_list(store: Store) -> None:
    filters = {"city": "Seattle|Redmond", "postalCode": "98000..98999", "email": "<>''"}
    added = store.setups.add(setup_for("bob", contact_filter=filters, create_in_bc=False))
    store.setups.add(setup_for("alice", enabled=False))

    assert store.setups.get("bob") == added
    assert store.setups.get("bob").contact_filter == filters  # type: ignore[union-attr]
    assert store.setups.get("nobody") is None
    assert [s.user_id for s in store.setups.list_all()] == ["alice", "bob"]
    assert [s.user_id for s in store.setups.list_all(enabled=True)] == ["bob"]
    assert [s.user_id for s in store.setups.list_all(enabled=False)] == ["alice"]


def test_setup_add_twice_is_an_error_and_leaves_the_transaction_usable(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    with pytest.raises(SetupExistsError):
        store.setups.add(setup_for("bob", folder_name="Other"))
    assert store.setups.require("bob").folder_name == "Business Central"

    with store.transaction() as tx:
        with pytest.raises(SetupExistsError):
            tx.setups.add(setup_for("bob"))
        tx.setups.add(setup_for("carol"))  # PostgreSQL would refuse this after a failed INSERT
    assert store.setups.get("carol") is not None


def test_setup_update_partial(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    updated = store.setups.update(
        "bob",
        folder_name="Contacts BC",
        contact_filter={"city": "@contoso*"},
        outlook_delete_policy=OutlookDeletePolicy.UNLINK,
    )
    assert updated.folder_name == "Contacts BC"
    assert updated.outlook_delete_policy is OutlookDeletePolicy.UNLINK
    assert store.setups.get("bob") == updated
    assert updated.mailbox == "bob@x.test"  # untouched fields stay


def test_setup_update_errors(store: Store) -> None:
    with pytest.raises(SetupNotFoundError):
        store.setups.update("ghost", enabled=False)
    store.setups.add(setup_for("bob"))
    with pytest.raises(ValidationError):
        store.setups.update("bob", max_delete_share=2.0)
    with pytest.raises(ValidationError):
        store.setups.update("bob", no_such_field=1)
    with pytest.raises(ValueError, match="cannot change"):
        store.setups.update("bob", user_id="robert")
    assert store.setups.get("bob") == setup_for("bob")


def test_setup_enable_disable_remove(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    assert store.setups.disable("bob").enabled is False
    assert store.setups.require("bob").enabled is False
    assert store.setups.enable("bob").enabled is True
    with pytest.raises(SetupNotFoundError):
        store.setups.disable("ghost")
    with pytest.raises(SetupNotFoundError):
        store.setups.require("ghost")

    assert store.setups.remove("bob") is True
    assert store.setups.remove("bob") is False
    assert store.setups.get("bob") is None


def test_removing_a_setup_removes_its_links_and_state_but_not_its_audit(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    store.links.upsert(link_for("bob", 1))
    store.state.set_delta_link("bob", "https://graph/delta?$deltatoken=1")
    store.audit.append(AuditRecord("bob", AuditKind.SKIPPED))
    store.setups.remove("bob")
    assert store.links.for_user("bob") == []
    assert store.state.get("bob").delta_link is None
    assert len(store.audit.list_records(user_id="bob")) == 1


# --- links -------------------------------------------------------------------------------------


def test_link_upsert_get_delete(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    link = link_for("bob", 1)
    stored = store.links.upsert(link)
    assert stored.updated_at is not None and stored.updated_at.tzinfo is UTC
    assert stored == dataclasses.replace(link, updated_at=stored.updated_at)

    assert store.links.get("bob", "bc-000001") == stored
    assert store.links.graph_change_keys(
        [("bob", "AAMkAG-000001="), ("bob", "AAMkAG-nope="), ("alice", "AAMkAG-000001=")]
    ) == {("bob", "AAMkAG-000001="): "ck1"}, "the router's echo check: linked ids only"
    assert store.links.get("bob", "bc-nope") is None
    assert store.links.get("alice", "bc-000001") is None

    changed = store.links.upsert(dataclasses.replace(link, graph_change_key="ck-new", bc_etag=""))
    assert store.links.get("bob", "bc-000001") == changed
    assert store.links.count("bob") == 1

    assert store.links.delete("bob", "bc-000001") is True
    assert store.links.delete("bob", "bc-000001") is False
    assert store.links.get("bob", "bc-000001") is None


def test_link_datetimes_come_back_in_utc_and_naive_ones_are_refused(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    paris = timezone(timedelta(hours=2))
    modified = datetime(2025, 6, 1, 14, 30, 0, 5, tzinfo=paris)
    store.links.upsert(link_for("bob", 1, bc_modified=modified, origin=LinkOrigin.OUTLOOK))
    got = store.links.get("bob", "bc-000001")
    assert got is not None
    assert got.bc_modified == modified and got.bc_modified.tzinfo is UTC
    assert got.origin is LinkOrigin.OUTLOOK

    store.links.upsert(link_for("bob", 2, bc_modified=None))
    assert store.links.get("bob", "bc-000002").bc_modified is None  # type: ignore[union-attr]

    with pytest.raises(ValueError, match="naive"):
        store.links.upsert(link_for("bob", 3, bc_modified=datetime(2025, 1, 1)))


def test_link_errors(store: Store) -> None:
    with pytest.raises(SetupNotFoundError):
        store.links.upsert(link_for("ghost", 1))
    store.setups.add(setup_for("bob"))
    store.links.upsert(link_for("bob", 1))
    with pytest.raises(LinkConflictError):  # the same Outlook contact for a second BC contact
        store.links.upsert(link_for("bob", 2, graph_id="AAMkAG-000001="))
    with pytest.raises(SetupNotFoundError):  # the bulk path too (COPY on PostgreSQL)
        store.links.upsert_many([link_for("ghost", n) for n in range(1500)])
    assert store.links.count("bob") == 1


def test_links_bulk_round_trip(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    store.setups.add(setup_for("alice"))
    links = [link_for("bob", n) for n in range(10_000)]
    assert store.links.upsert_many(links) == 10_000
    store.links.upsert_many([link_for("alice", n) for n in range(5)])

    loaded = store.links.for_user("bob")
    assert [dataclasses.replace(link, updated_at=None) for link in loaded] == links
    assert all(link.updated_at is not None for link in loaded)

    # A second bulk upsert changes what differs and adds what is new.
    again = [dataclasses.replace(link, synced_hash="changed") for link in links[:100]]
    store.links.upsert_many([*again, link_for("bob", 10_000)])
    assert store.links.count("bob") == 10_001
    assert store.links.get("bob", "bc-000099").synced_hash == "changed"  # type: ignore[union-attr]
    assert store.links.get("bob", "bc-000100") == loaded[100]
    assert store.links.upsert_many([]) == 0
    twice = [link_for("bob", n) for n in range(20_000, 21_000)] * 2
    assert store.links.upsert_many([*twice, link_for("bob", 20_000, bc_etag="last")]) == 1000
    assert store.links.get("bob", "bc-020000").bc_etag == "last"  # type: ignore[union-attr]
    assert store.links.delete_many("bob", [link.bc_id for link in twice]) == 1000

    assert store.links.delete_many("bob", [link.bc_id for link in links[:2500]]) == 2500
    assert store.links.count("bob") == 7501
    assert store.links.count("alice") == 5


def test_links_keep_their_synced_content_in_bulk_and_load_without_it(store: Store) -> None:
    """Big batches (PostgreSQL: COPY) keep each link's content; a user's links load without
    it, and the near-real-time path reads it for the ids it asks."""
    store.setups.add(setup_for("bob"))
    links = [link_for("bob", n) for n in range(1500)]
    contents = {("bob", link.bc_id): f'{{"n": {n}}}' for n, link in enumerate(links) if n % 2}
    assert store.links.upsert_many(links, contents) == 1500
    assert store.links.synced_contents("bob", ["bc-000001", "bc-000002", "bc-000003"]) == {
        "bc-000001": '{"n": 1}', "bc-000003": '{"n": 3}'}
    assert dataclasses.replace(store.links.for_user("bob")[1], updated_at=None) == links[1]
    store.links.upsert_many(links[:2])  # saved again without content: none, not the old one
    assert store.links.synced_contents("bob", ["bc-000001"]) == {}


def test_users_holding_a_link_to_a_bc_contact(store: Store) -> None:
    for user in ("carol", "alice", "bob"):
        store.setups.add(setup_for(user))
    store.links.upsert(link_for("carol", 1))
    store.links.upsert(link_for("alice", 1))
    store.links.upsert(link_for("alice", 2))
    assert store.links.users_for_bc_id("bc-000001") == ["alice", "carol"]
    assert store.links.users_for_bc_id("bc-000002") == ["alice"]
    assert store.links.users_for_bc_id("bc-000003") == []
    assert store.links.users_for_bc_ids(["bc-000001", "bc-000002", "bc-000003"]) == {
        "bc-000001": ["alice", "carol"],
        "bc-000002": ["alice"],
    }


def test_for_ids_finds_a_users_links_by_either_id(store: Store,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The near-real-time path's links: by BC id or Graph id, the user's only, each once,
    ordered by BC id; the same whether the ids fit one query or need chunks."""
    store.setups.add(setup_for("bob"))
    store.setups.add(setup_for("alice"))
    store.links.upsert_many([link_for("bob", n) for n in range(1, 6)])
    store.links.upsert(link_for("alice", 2))
    for chunk in (1000, 1):
        monkeypatch.setattr("contactsync.store.links._IN_CHUNK", chunk)
        found = store.links.for_ids("bob", ["bc-000004", "bc-000002", "bc-nope"],
                                    ["AAMkAG-000002=", "AAMkAG-000001="])
        assert [link.bc_id for link in found] == ["bc-000001", "bc-000002", "bc-000004"]
        assert store.links.for_ids("bob", [], []) == []


def test_bc_ids_are_one_link_in_any_case(store: Store) -> None:
    """Issue 12, defect 7: BC ids are GUIDs; a notification or a tag spelling one in upper
    case finds the same link, and re-saving it in another case keeps one link."""
    guid = "5d115c9c-44e3-ea11-bb43-000d3a2feca1"
    store.setups.add(setup_for("dana"))
    store.links.upsert(link_for("dana", 1, bc_id=guid.upper()))
    store.links.upsert(link_for("dana", 1, bc_id=guid, graph_change_key="ck-new"))
    assert store.links.count("dana") == 1
    found = store.links.get("dana", guid.upper())
    assert found is not None and found.graph_change_key == "ck-new"
    assert store.links.users_for_bc_ids([guid.upper()]) == {guid: ["dana"]}
    assert [x.bc_id for x in store.links.for_ids("dana", [guid.upper()], [])] == [guid]
    assert store.links.delete("dana", guid.upper()) is True


def test_unit_of_work_commits_links_and_audit_together_or_not_at_all(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    conflict = AuditRecord("bob", AuditKind.CONFLICT, "bc-000001", "g1", {"lost": {"a": 1}})

    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.links.upsert_many([link_for("bob", n) for n in range(10)])
        tx.audit.append(conflict)
        tx.state.set_watermark("cronus", T0)
        raise RuntimeError("crash before commit")
    assert store.links.count("bob") == 0
    assert store.audit.list_records() == []
    assert store.state.get_watermark("cronus") is None

    with store.transaction() as tx:
        tx.links.upsert_many([link_for("bob", n) for n in range(10)])
        tx.audit.append_many([conflict, conflict])
        tx.state.set_watermark("cronus", T0)
        assert tx.links.count("bob") == 10  # reads inside see the transaction's own writes
    assert store.links.count("bob") == 10
    assert len(store.audit.list_records(user_id="bob")) == 2
    assert store.state.get_watermark("cronus") == T0


# --- sync state --------------------------------------------------------------------------------


def test_user_sync_state(store: Store) -> None:
    store.setups.add(setup_for("bob"))
    empty = store.state.get("bob")
    assert (empty.delta_link, empty.last_sync_at, empty.last_full_sync_at) == (None, None, None)

    delta = (
        "https://graph.microsoft.com/v1.0/users/bob/contactFolders/f/contacts/delta?$deltatoken=x"
    )
    assert store.state.set_delta_link("bob", delta).delta_link == delta
    store.state.mark_synced("bob", T0, full=True)
    later = T0 + timedelta(minutes=5)
    state = store.state.mark_synced("bob", later)
    assert (state.delta_link, state.last_sync_at, state.last_full_sync_at) == (delta, later, T0)
    assert store.state.get("bob") == state

    cleared = store.state.update("bob", delta_link=None)  # e.g. Graph said the token expired
    assert cleared.delta_link is None and cleared.last_sync_at == later
    with pytest.raises(SetupNotFoundError):
        store.state.set_delta_link("ghost", delta)


def test_company_watermarks(store: Store) -> None:
    assert store.state.get_watermark("CRONUS") is None
    store.state.set_watermark("CRONUS", T0)
    assert store.state.get_watermark("CRONUS") == T0
    assert store.state.get_watermark("OTHER") is None

    assert store.state.advance_watermark("CRONUS", T0 + timedelta(seconds=1)) == T0 + timedelta(
        seconds=1
    )
    assert store.state.advance_watermark("CRONUS", T0) == T0 + timedelta(seconds=1)  # not back
    assert store.state.advance_watermark("NEW", T0) == T0
    store.state.set_watermark("CRONUS", T0 - timedelta(days=1))  # an explicit reset may go back
    assert store.state.get_watermark("CRONUS") == T0 - timedelta(days=1)

    eastern = T0.astimezone(timezone(timedelta(hours=-5)))
    store.state.set_watermark("TZ", eastern)
    assert store.state.get_watermark("TZ") == T0


# --- subscriptions -----------------------------------------------------------------------------


def subscription(sub_id: str, **fields: object) -> Subscription:
    values: dict[str, object] = {
        "subscription_id": sub_id,
        "service": SubscriptionService.GRAPH,
        "resource": "users/bob/contactFolders/f/contacts",
        "client_state": "s3cr3t-client-state",
        "expiration": T0 + timedelta(days=2),
        "notification_url": "https://hooks.example/graph",
        "user_id": "bob",
    }
    values.update(fields)
    return Subscription(**values)  # type: ignore[arg-type]


def test_subscriptions(store: Store) -> None:
    graph = store.subscriptions.upsert(subscription("g-1"))
    bc = store.subscriptions.upsert(
        subscription(
            "bc-1",
            service=SubscriptionService.BC,
            user_id=None,
            company="CRONUS",
            resource="api/v2.0/companies(1)/contacts",
            expiration=T0 + timedelta(days=1),
        )
    )
    assert store.subscriptions.get("g-1") == graph
    assert store.subscriptions.get("nope") is None
    assert store.subscriptions.list_all() == [bc, graph]  # soonest expiring first
    assert store.subscriptions.list_all(service=SubscriptionService.GRAPH) == [graph]
    assert store.subscriptions.list_all(user_id="bob") == [graph]
    assert store.subscriptions.list_all(company="CRONUS") == [bc]
    assert store.subscriptions.list_all(expiring_before=T0 + timedelta(days=1, hours=1)) == [bc]

    renewed = store.subscriptions.upsert(
        dataclasses.replace(graph, expiration=T0 + timedelta(days=3))
    )
    assert store.subscriptions.get("g-1") == renewed
    assert store.subscriptions.delete("g-1") is True
    assert store.subscriptions.delete("g-1") is False
    assert store.subscriptions.list_all() == [bc]


def test_subscription_client_state_stays_out_of_repr() -> None:
    sub = subscription("g-1")
    assert "s3cr3t" not in repr(sub) and "s3cr3t" not in str(sub)
    assert "g-1" in repr(sub)
    with pytest.raises(ValueError):
        subscription("g-2", user_id=None, company=None)


# --- audit -------------------------------------------------------------------------------------


def test_audit_append_and_list(store: Store) -> None:
    lost = {"displayName": "Old Name", "emailAddresses": [{"address": "a@x.test"}], "n": 1.5}
    first = store.audit.append(AuditRecord("bob", AuditKind.CONFLICT, "bc-1", "g-1", lost, at=T0))
    assert first.id is not None and first.at == T0
    store.audit.append_many(
        AuditRecord("bob", AuditKind.SKIPPED, "bc-2", details={"reason": "no email"},
                    at=T0 + timedelta(minutes=n))
        for n in range(1, 4)
    )  # fmt: skip
    store.audit.append(AuditRecord("alice", "reconcile_report", details={"created": 3}))

    bob = store.audit.list_records(user_id="bob")
    assert [r.kind for r in bob] == ["skipped", "skipped", "skipped", "conflict"]  # newest first
    assert bob[-1] == first and bob[-1].details == lost
    assert len(store.audit.list_records(user_id="bob", kind=AuditKind.SKIPPED, limit=2)) == 2
    assert store.audit.list_records(kind="conflict") == [first]
    assert len(store.audit.list_records(since=T0 + timedelta(minutes=2), user_id="bob")) == 2
    alice = store.audit.list_records(user_id="alice")
    assert alice[0].details == {"created": 3} and alice[0].at is not None


def test_one_outlook_folder_of_one_mailbox_belongs_to_one_setup(store: Store) -> None:
    store.setups.add(UserSetup(user_id="anna", mailbox="anna@contoso.test", mailbox_id="ID-1"))
    refused = [
        UserSetup(user_id="ANNA2", mailbox="ANNA@contoso.test"),  # case variant, no id yet
        UserSetup(user_id="anna3", mailbox="a.smith@contoso.test", mailbox_id="id-1"),  # alias
        UserSetup(user_id="anna4", mailbox="anna@contoso.test", folder_name="business CENTRAL"),
    ]
    for setup in refused:
        with pytest.raises(FolderTakenError, match="already belongs to setup 'anna'"):
            store.setups.add(setup)
    with pytest.raises(FolderTakenError):  # an address Graph resolved for the same user
        store.setups.add(UserSetup(user_id="anna5", mailbox="id-1x"), aliases=["Anna@Contoso.test"])
    store.setups.add(UserSetup(user_id="anna-other", mailbox="anna@contoso.test",
                               mailbox_id="ID-1", folder_name="Other"))
    with pytest.raises(FolderTakenError):
        store.setups.update("anna-other", folder_name="Business Central")
    assert [s.user_id for s in store.setups.list_all()] == ["anna", "anna-other"]
    assert store.setups.folder_conflicts() == []


def test_a_store_that_already_shares_a_folder_stops_the_later_setups(db_url: str) -> None:
    write_v2_setups(db_url, [("b-first", "user1@contoso.test"), ("a-second", "USER1@contoso.test"),
                             ("c-third", "user1@contoso.test")])
    with Store.open(db_url) as store:
        stopped = store.setups.folder_conflicts()
        assert [(s.user_id, s.shares_folder_with) for s in stopped] == [
            ("a-second", "b-first"), ("c-third", "b-first")]
        assert "shares folder 'Business Central'" in stopped[0].stopped_reason
        assert not stopped[0].syncs and store.setups.require("b-first").syncs
        # The holder goes: the earliest of the others holds the folder now.
        store.setups.remove("b-first")
        assert [(s.user_id, s.shares_folder_with) for s in store.setups.folder_conflicts()] == [
            ("c-third", "a-second")]
        # A stopped setup given a folder of its own syncs again.
        moved = store.setups.update("c-third", folder_name="Customers")
        assert moved.syncs and store.setups.folder_conflicts() == []


def test_resolving_two_aliases_to_one_mailbox_stops_the_later_setup(store: Store) -> None:
    # Stored before their ids were resolved: two addresses of one mailbox, one folder.
    store.setups.add(UserSetup(user_id="first", mailbox="anna@contoso.test"))
    store.setups.add(UserSetup(user_id="second", mailbox="a.smith@contoso.test"))
    assert store.setups.record_mailbox_id("second", "ID-1").syncs, "no other known id yet"
    store.setups.record_mailbox_id("first", "id-1")  # `users validate` of the earlier one
    assert [(s.user_id, s.shares_folder_with) for s in store.setups.folder_conflicts()] == [
        ("second", "first")]
