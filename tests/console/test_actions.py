"""Actions in the console: confirmed, CSRF-protected, audited with who did them; runs go out
as the same `sync.commands` the CLI publishes (read back from the real broker)."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from contactsync.console.access import OPEN_ADMIN
from contactsync.console.app import create_console_app
from contactsync.emulators.running import RunningEmulators
from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at
from contactsync.schemas.envelope import decode
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from tests.admin.test_setup_safety import USER1
from tests.kafka_fixtures import read_topic


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the form carries no CSRF token"
    return match.group(1)


def _confirmed(client: TestClient, user: str, action: str) -> dict[str, str]:
    page = client.get(f"/users/{user}/confirm", params={"action": action})
    assert page.status_code == 200
    return {"csrf": _csrf(page.text), "action": action, "confirmed": "yes"}


def _console_actions(store: Store, user: str) -> list[dict[str, object]]:
    return [r.details for r in store.audit.list_records(user_id=user, kind="console_action")]


def test_disable_is_confirmed_and_audited(client: TestClient, store: Store):
    form = _confirmed(client, "alice@contoso.com", "disable")
    done = client.post("/users/alice@contoso.com/act", data=form)
    assert done.status_code == 200  # followed the redirect to the user's page
    assert "disabled alice@contoso.com" in done.text
    assert store.setups.require("alice@contoso.com").enabled is False
    assert _console_actions(store, "alice@contoso.com") == [{"action": "disable",
                                                             "by": OPEN_ADMIN}]


def test_an_action_without_the_csrf_token_changes_nothing(client: TestClient, store: Store):
    client.get("/users")  # the browser has its cookie; a foreign page cannot know the token
    forged = client.post("/users/alice@contoso.com/act",
                         data={"action": "disable", "confirmed": "yes", "csrf": "guess"})
    assert forged.status_code == 403
    assert "reload the page and try again" in forged.text
    missing = client.post("/users/alice@contoso.com/act",
                          data={"action": "disable", "confirmed": "yes"})
    assert missing.status_code == 403
    assert store.setups.require("alice@contoso.com").enabled is True
    assert _console_actions(store, "alice@contoso.com") == []


def test_an_unconfirmed_action_changes_nothing(client: TestClient, store: Store):
    form = {**_confirmed(client, "alice@contoso.com", "disable"), "confirmed": ""}
    page = client.post("/users/alice@contoso.com/act", data=form)
    assert "Nothing done: the action was not confirmed." in page.text
    assert store.setups.require("alice@contoso.com").enabled is True


def test_filter_is_checked_as_typed_with_the_clis_caret(client: TestClient):
    bad = client.get("/filter-check", params={"field": "city", "expression": "Seattle|(Redm"})
    assert bad.status_code == 200
    lines = bad.text.splitlines()
    assert lines[0].startswith("Invalid filter for 'city' at character")
    assert lines[1] == "  Seattle|(Redm" and lines[2].endswith("^")
    assert client.get("/filter-check",
                      params={"field": "city", "expression": "Seattle|Redmond"}).text == "ok"
    unknown = client.get("/filter-check", params={"field": "shoeSize", "expression": "42"})
    assert "Unknown filter field 'shoeSize'" in unknown.text


def test_add_user_checks_like_users_add(emulated_client: TestClient, store: Store):
    client = emulated_client
    csrf = _csrf(client.get("/users/new").text)
    form = {"csrf": csrf, "mailbox": USER1, "folder": "Business Central",
            "filter_field": "city", "filter_expression": ">=A&"}
    refused = client.post("/users", data=form)
    assert refused.status_code == 400
    shown = html.unescape(refused.text)
    assert "invalid filter: Invalid filter for 'city' at character 5" in shown
    assert "\n  >=A&\n      ^" in shown  # the caret under the bad character, as in the CLI
    assert store.setups.get(USER1) is None

    unknown = client.post("/users", data={**form, "mailbox": "nobody@contoso.test",
                                           "filter_expression": "Seattle"})
    assert unknown.status_code == 400 and "nobody@contoso.test" in html.unescape(unknown.text)
    assert store.setups.get("nobody@contoso.test") is None

    added = client.post("/users", data={**form, "filter_field": "", "filter_expression": ""})
    assert added.status_code == 200
    assert f"added {USER1}." in added.text and "starts disabled" in added.text
    setup = store.setups.require(USER1)
    assert setup.enabled is False and setup.folder_name == "Business Central"
    assert _console_actions(store, USER1)[0]["by"] == OPEN_ADMIN

    again = client.post("/users", data={**form, "filter_field": ""})
    assert again.status_code == 400
    assert f"a setup for user '{USER1}' already exists" in html.unescape(again.text)

    enabled = client.post(f"/users/{USER1}/act", data=_confirmed(client, USER1, "enable"))
    assert f"enabled {USER1}." in enabled.text  # then what the first sync will do, as the CLI
    assert store.setups.require(USER1).enabled is True
    assert [a["action"] for a in _console_actions(store, USER1)] == ["enable", "add"]


def test_edit_user_checks_like_users_set_confirms_and_audits(emulated_client: TestClient,
                                                              store: Store):
    client = emulated_client
    store.setups.add(UserSetup(user_id=USER1, mailbox=USER1))
    store.setups.add(UserSetup(user_id="user1-archive", mailbox=USER1, folder_name="Archive"))
    edit = html.unescape(client.get(f"/users/{USER1}/edit").text)
    assert 'name="folder" value="Business Central"' in edit
    assert '<option value="recreate" selected>' in edit
    form = {"csrf": _csrf(edit), "folder": "Business Central", "filter_field": "city",
            "filter_expression": "Seattle|(Redm", "outlook_delete": "recreate"}

    bad = client.post(f"/users/{USER1}/edit", data=form)
    assert bad.status_code == 400
    assert "\n  Seattle|(Redm\n" in html.unescape(bad.text)  # the CLI's caret follows
    blank = client.post(f"/users/{USER1}/edit", data={**form, "folder": " ",
                                                      "filter_field": ""})
    assert blank.status_code == 400 and "the folder name is blank" in blank.text
    forged = client.post(f"/users/{USER1}/edit", data={**form, "csrf": "guess"})
    assert forged.status_code == 403

    # The box left unticked: contacts made in Outlook are no longer created in BC.
    wanted = {**form, "filter_expression": "Seattle", "outlook_delete": "unlink"}
    review = html.unescape(client.post(f"/users/{USER1}/edit", data=wanted).text)
    assert "<tr><th>Filter</th><td>all contacts</td><td>city=Seattle</td></tr>" in review
    assert "<tr><th>Deleted in Outlook</th><td>recreate</td><td>unlink</td></tr>" in review
    assert "<tr><th>Create in BC</th><td>yes</td><td>no</td></tr>" in review
    assert "Outlook folder" not in review  # unchanged settings are not listed
    assert store.setups.require(USER1).contact_filter == {}  # nothing before the confirmation
    assert _console_actions(store, USER1) == []

    confirmed = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', review))
    assert confirmed["confirmed"] == "yes"
    done = client.post(f"/users/{USER1}/edit", data=confirmed)
    assert done.status_code == 200
    shown = html.unescape(done.text)
    assert f"updated {USER1}: contact_filter, create_in_bc, outlook_delete_policy." in shown
    assert re.search(r"the filter selects \d+ BC contacts? now", shown)  # counted, as the CLI
    setup = store.setups.require(USER1)
    assert (setup.contact_filter, setup.create_in_bc, setup.outlook_delete_policy) == (
        {"city": "Seattle"}, False, "unlink")
    assert _console_actions(store, USER1) == [{
        "action": "edit", "by": OPEN_ADMIN,
        "changes": {"contact_filter": {"city": "Seattle"}, "create_in_bc": False,
                    "outlook_delete_policy": "unlink"}}]

    taken = client.post(f"/users/{USER1}/edit",
                        data={**wanted, "folder": "Archive", "confirmed": "yes"})
    assert taken.status_code == 400
    assert "already belongs to setup 'user1-archive'" in html.unescape(taken.text)
    assert store.setups.require(USER1).folder_name == "Business Central"
    unchanged = client.post(f"/users/{USER1}/edit", data={**wanted, "confirmed": "yes"})
    assert "Nothing changed" in unchanged.text


def test_forcing_a_full_sync_shows_what_it_would_remove_first(
        emulated_client: TestClient, emulated_settings: Settings, store: Store):
    """A user narrowed to one city: a forced Full sync would remove the others from Outlook.
    The confirmation lists them by name (email masked) from a dry run, writing nothing."""
    from contactsync.engine.links import SyncMode
    from contactsync.sync.runner import sync_user
    from contactsync.sync.services import open_services

    store.setups.add(UserSetup(user_id=USER1, mailbox=USER1))

    async def full_sync() -> None:
        async with open_services(emulated_settings, store) as services:
            await sync_user(store.setups.require(USER1), SyncMode.FULL, graph=services.graph,
                            bc=services.bc, store=store)

    asyncio.run(full_sync())
    store.setups.update(USER1, contact_filter={"city": "Seattle"})
    links = store.links.count(USER1)

    page = html.unescape(emulated_client.get(
        f"/users/{USER1}/confirm", params={"action": "force_full_sync"}).text)
    removals = re.findall(r"<li>(remove from Outlook.*?)</li>", page)
    assert removals, page[-3000:]
    for line in removals:  # a name, the email masked as the logs mask it, the ids
        assert re.search(r"\S+ \S+ <\w\*\*\*@[\w.]+>  \[bc=\S+ outlook=\S+\]", line), line
    assert f"remove from Outlook {len(removals)}" in page
    assert "Yes, full sync past the mass-delete safety rail" in page
    assert store.links.count(USER1) == links  # the preview wrote nothing
    assert _console_actions(store, USER1) == []


def test_a_preview_slower_than_the_pages_bound_says_so_and_names_the_next_step(
        emulated_client: TestClient, emulators: RunningEmulators, store: Store,
        monkeypatch: pytest.MonkeyPatch):
    """Graph answers the folder listing slowly: the page does not wait for it in silence."""
    from contactsync.console import app
    from contactsync.emulators.common.faults import FaultSpec

    store.setups.add(UserSetup(user_id=USER1, mailbox=USER1))
    monkeypatch.setattr(app, "PREVIEW_WITHIN_S", 1.0)  # the bound, not the speed, is tested
    emulators.graph.faults.add(
        FaultSpec(kind="latency", seconds=4, route="contactFolders", count=5))
    page = html.unescape(emulated_client.get(
        f"/users/{USER1}/confirm", params={"action": "force_full_sync"}).text)
    assert ("the dry run that lists what it would remove did not finish within 1 s" in page)
    assert f"run `contactsync sync {USER1} --full --dry-run --force` in a terminal" in page
    assert "Yes, full sync past" not in page  # nobody forces blind


def test_forcing_without_a_preview_cannot_be_confirmed(client: TestClient):
    """No tenant reachable: the page says why, and offers no button to force blind."""
    page = html.unescape(client.get("/users/alice@contoso.com/confirm",
                                    params={"action": "force_full_sync"}).text)
    assert "Cannot show what it would remove, so it cannot be confirmed here:" in page
    assert "Yes, full sync past" not in page


@pytest.fixture
def kafka_client(kafka_settings: Settings, store: Store) -> Iterator[TestClient]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    settings = kafka_settings.model_copy(update={"database_url": str(store.engine.url)})
    with TestClient(create_console_app(settings, store)) as test_client:
        yield test_client


@pytest.mark.kafka
def test_runs_publish_the_clis_sync_commands(kafka_client: TestClient, store: Store,
                                             kafka_settings: Settings):
    user = "alice@contoso.com"
    sync = kafka_client.post(f"/users/{user}/act", data=_confirmed(kafka_client, user, "sync"))
    assert "Sync for alice@contoso.com published as run console-" in sync.text
    kafka_client.post(f"/users/{user}/act",
                      data=_confirmed(kafka_client, user, "dry_full_sync"))

    records = read_topic(kafka_settings, SYNC_COMMANDS)
    commands = [decode(r.value).payload for r in records]
    assert all(r.key == user.encode() for r in records)  # keyed like the router and the CLI
    assert [(c.kind, c.dry_run, c.user_id) for c in commands] == [
        ("sync", False, user), ("full_sync", True, user)]
    assert all(c.run_id.startswith("console-") for c in commands)
    audited = _console_actions(store, user)
    assert {a["action"] for a in audited} == {"sync", "full_sync"}

    # A disabled user's run is refused with the next step, and nothing is published.
    store.setups.disable(user)
    refused = kafka_client.post(f"/users/{user}/act", data=_confirmed(kafka_client, user,
                                                                      "sync"))
    assert "sync is disabled for alice@contoso.com: enable it first" in refused.text
    assert len(read_topic(kafka_settings, SYNC_COMMANDS)) == 2
