"""Security, over a run of every role as its own process (DEBUG logs captured to files):

- every subscription's clientState is at least 32 random bytes, and the webhook compares it in
  constant time (hmac.compare_digest);
- no token, secret or clear e-mail address in any log line of the run;
- a contact never lands, even for a moment, in the folder of a user whose filter excludes it;
- a notification forged with one user's secret, naming another user's contact, writes nothing.
"""

from __future__ import annotations

import base64
import hmac
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from contactsync.clients.graph import new_client_state
from contactsync.logs import configure_logging, get_logger
from contactsync.producers.webhook import intake
from contactsync.store.records import SubscriptionService
from tests.kafka_fixtures import KafkaHandle
from tests.reliability.harness import Deployment, Ledger, email_of, eventually

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def run(kafka: KafkaHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = Deployment(tmp_path_factory.mktemp("security"), kafka.bootstrap, log_level="DEBUG")
    try:
        dep.setup(contacts=8, seed=21)
        dep.start_all()
        yield dep
    finally:
        dep.close()


def _secret_bytes(state: str) -> int:
    return len(base64.urlsafe_b64decode(state + "=" * (-len(state) % 4)))


def test_client_states_are_long_random_and_compared_in_constant_time(
        run: Deployment, monkeypatch: pytest.MonkeyPatch):
    subs = run.store.subscriptions.list_all()
    assert len(subs) == len(run.users) + 1  # a Graph one per user, one for the BC company
    states = [s.client_state for s in subs]
    assert len(set(states)) == len(states), "two subscriptions share a secret"
    assert all(_secret_bytes(s) >= 32 for s in states), "a clientState under 32 bytes"
    fresh = {new_client_state() for _ in range(200)}
    assert len(fresh) == 200 and min(_secret_bytes(s) for s in fresh) >= 32
    # The comparison goes through hmac.compare_digest (constant time), never `==`.
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(intake.hmac, "compare_digest", recording)
    sub = subs[0]
    info = intake.SubscriptionInfo(sub.subscription_id, sub.service.value, "owner",
                                   sub.client_state)
    # One character off (a random state may end in "x" already: then "y").
    off_by_one = sub.client_state[:-1] + ("y" if sub.client_state.endswith("x") else "x")
    assert intake.refusal_reason(info, sub.service.value, off_by_one) \
        == intake.CLIENT_STATE_MISMATCH
    assert intake.refusal_reason(info, sub.service.value, sub.client_state) is None
    assert len(seen) == 2 and seen[1] == (sub.client_state.encode(),) * 2


def test_a_forged_notification_naming_another_users_contact_writes_nothing(run: Deployment):
    anna, ben = run.users[0].mailbox, run.users[1].mailbox
    [bens] = run.store.subscriptions.list_all(service=SubscriptionService.GRAPH, user_id=ben)
    victim = run.folder(anna)[0]
    before = run.writes()
    run.quiet(2.0)
    before = run.writes()
    # Someone holding ben's subscription secret names anna's contact, as created, updated and
    # deleted: hints for ben's folder only, which holds nothing to change.
    for change in ("created", "updated", "deleted"):
        body = {"value": [{
            "subscriptionId": bens.subscription_id, "clientState": bens.client_state,
            "changeType": change, "resource": f"Users/{anna}/Contacts/{victim['id']}",
            "resourceData": {"id": victim["id"], "@odata.etag": 'W/"forged"'},
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "tenantId": "t"}]}
        answer = httpx.post(f"{run.settings.webhook_public_url}/webhooks/graph", json=body)
        assert answer.status_code == 202
    # A BC hint naming a contact that does not exist, with the company's secret.
    [bcs] = run.store.subscriptions.list_all(service=SubscriptionService.BC)
    hint = {"value": [{"subscriptionId": bcs.subscription_id, "clientState": bcs.client_state,
                       "changeType": "deleted",
                       "resource": f"api/v2.0/companies({run.settings.bc_company})/"
                                   "contacts(00000000-0000-0000-0000-000000000000)",
                       "lastModifiedDateTime": "2030-01-01T00:00:00Z"}]}
    assert httpx.post(f"{run.settings.webhook_public_url}/webhooks/bc",
                      json=hint).status_code == 202
    time.sleep(4)  # the hints travel through Kafka, the router and the applier
    run.quiet(2.0)
    assert run.writes() == before, "a forged notification caused a write"
    assert any(c["id"] == victim["id"] for c in run.folder(anna))
    assert not run.problems()


def test_a_contact_never_lands_in_the_folder_of_a_user_whose_filter_excludes_it(
        run: Deployment):
    ben = run.users[1]  # city = Seattle
    outsiders: set[str] = set()  # emails of contacts that were never in Seattle
    intruders: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            intruders.extend(email_of(c) for c in run.folder(ben.mailbox)
                             if email_of(c) in outsiders)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        rng = random.Random(4)
        for n in range(6):
            email = f"away{n}@example.com"
            outsiders.add(email)
            run.emulators.bc.create_contact({"displayName": f"Away {n}", "email": email,
                                             "type": "Person",
                                             "city": rng.choice(["London", "Redmond"])})
            # ...and an Outlook edit of a non-Seattle contact in anna's folder.
            anna_folder = run.folder(run.users[0].mailbox)
            other = next(c for c in anna_folder
                         if (c.get("businessAddress") or {}).get("city") != "Seattle")
            run.emulators.graph.person_update_contact(run.users[0].mailbox, other["id"],
                                                      {"jobTitle": f"Edit {n}"})
            outsiders.add(email_of(other))
        eventually(lambda: not run.problems(), 60, "converged")
        run.quiet(2.0)
    finally:
        stop.set()
        watcher.join()
    assert not intruders, f"in ben's folder, outside his filter: {sorted(set(intruders))}"
    assert all(email in {email_of(c) for c in run.folder(run.users[0].mailbox)}
               for email in outsiders), "anna (no filter) has them all"


def test_no_secret_token_or_clear_email_in_any_log_line(run: Deployment):
    # Make the run log a lot: changes both ways, a refused forgery, a fault with retries.
    ledger = Ledger()
    rng = random.Random(9)
    run.emulators.graph.add_fault(kind="status", status=503, count=2, route="contacts")
    for step in range(8):
        run.random_change(rng, ledger, step)
        time.sleep(0.1)
    sub = run.store.subscriptions.list_all()[0]
    httpx.post(f"{run.settings.webhook_public_url}/webhooks/graph", json={"value": [{
        "subscriptionId": sub.subscription_id, "clientState": "wrong-" + sub.client_state,
        "changeType": "updated", "resource": "Users/anna@contoso.test/Contacts/x",
        "tenantId": "t", "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}]})
    eventually(lambda: not run.problems(ledger), 60, "converged")
    run.quiet(2.0)
    run.stop()  # shutdown lines too
    text = run.log_text()
    assert '"level": "debug"' in text, "the run did not log at DEBUG: the scan proves little"
    emails = {u.mailbox for u in run.users}
    emails |= {c["email"].lower() for c in run.bc_contacts() if c.get("email")}
    emails |= set(ledger.outlook_creates)
    secrets_ = {s.client_state for s in run.store.subscriptions.list_all()}
    leaks = []
    for line in text.splitlines():
        low = line.lower()
        leaks += [f"email {e}: {line[:200]}" for e in emails if e in low]
        leaks += [f"clientState: {line[:120]}" for s in secrets_ if s in line]
        if re.search(r"(?i)bearer\s+(?!\*\*\*)\S{8,}", line) or re.search(
                r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.", line):
            leaks.append(f"token: {line[:200]}")
    assert not leaks, "\n".join(leaks[:20])


def test_redaction_covers_library_log_lines_and_command_errors(capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    """Lines that do not go through structlog (stdlib loggers of libraries) are redacted too;
    a command's error sentence never carries a token (it keeps the mailbox the admin typed)."""
    import io
    import logging

    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    logging.getLogger("kafka.test").warning("could not reach users/anna@contoso.test/contacts "
                                            "with Bearer abc.def.ghi")
    get_logger("t").info("x", mailbox="anna@contoso.test", client_state="s3cr3t-value")
    out = stream.getvalue()
    assert "anna@contoso.test" not in out and "s3cr3t-value" not in out, out
    assert "abc.def.ghi" not in out, out

    # uvicorn (the webhook command's server) logs through the same redaction.
    import uvicorn

    from contactsync.cli.webhook_cmd import UVICORN_LOGGING

    uvicorn.Config(lambda *_: None, **UVICORN_LOGGING)
    logging.getLogger("uvicorn.error").error("Exception in ASGI application: ben@contoso.test")
    assert "ben@contoso.test" not in stream.getvalue() and "b***@contoso.test" in \
        stream.getvalue(), stream.getvalue()

    from contactsync.cli.common import user_errors
    from contactsync.clients.errors import ServiceError

    with pytest.raises(typer.Exit), user_errors():
        raise ServiceError("401 for Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl")
    err = capsys.readouterr().err
    assert "eyJhbGciOi" not in err and "error: 401" in err, err


def test_an_unexpected_crash_does_not_print_local_variables(tmp_path: Path) -> None:
    # Typer's pretty tracebacks print every local variable of every frame (secrets, tokens,
    # contacts) unless told not to.
    from contactsync.cli.main import app

    assert app.pretty_exceptions_show_locals is False
