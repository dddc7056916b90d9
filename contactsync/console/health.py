"""The Health page's checks, and the one sentence a failure shows on a page."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import text

from contactsync.settings import Settings
from contactsync.store import Store

ANSWER_WITHIN_S = 8.0  # a page never hangs on a broker that is down (kafka-python waits 30 s)
T = TypeVar("T")

if TYPE_CHECKING:
    from contactsync.console.backlog import Backlog, BacklogView


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not known in this process (shown as n/a, not as ok)
    detail: str


def sentence(exc: BaseException) -> str:
    """A failure as the CLI words it (one sentence, secrets redacted)."""
    from contactsync.cli.common import _known_failure
    from contactsync.logs import redact_secrets

    known = _known_failure(exc) if isinstance(exc, Exception) else None
    return redact_secrets(known or f"{type(exc).__name__}: {exc}")


class NoAnswer(TimeoutError):
    pass


def bounded(work: Callable[[], T], what: str, seconds: float = ANSWER_WITHIN_S) -> T:
    """`work()` in a daemon thread, given up on after `seconds` (the thread ends on its own,
    when the client's own timeout fires); NoAnswer names `what` did not answer."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="console-bounded", daemon=True)
    thread.start()
    thread.join(seconds)
    if failure:
        raise failure[0]
    if not outcome:
        raise NoAnswer(f"{what} did not answer within {seconds:.0f} s: check that it runs and "
                       "that KAFKA_BOOTSTRAP_SERVERS names it")
    return outcome[0]


def store_check(store: Store) -> Check:
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        users = len(store.setups.list_all())
    except Exception as exc:
        return Check("Store", False, sentence(exc))
    return Check("Store", True, f"{store!r}: reachable, {users} user setup(s)")


def _our_topics(settings: Settings) -> list[str]:
    from contactsync.kafka.io import make_consumer

    consumer = make_consumer(settings, None, client_id="contactsync-console-health")
    try:
        return sorted(t for t in consumer.topics() if t.startswith(settings.topic_prefix))
    finally:
        consumer.close()


def broker_check(settings: Settings) -> Check:
    from contactsync.cli.common import kafka_bootstrap
    from contactsync.kafka.errors import BrokerError

    bootstrap = "?"
    try:
        bootstrap = kafka_bootstrap(settings)  # no broker: the CLI's sentence, in seconds
        mine = bounded(lambda: _our_topics(settings),
                       f"the Kafka broker at {bootstrap}")
    except (BrokerError, NoAnswer) as exc:  # each says what to do
        return Check("Kafka broker", False, sentence(exc))
    except Exception as exc:
        return Check("Kafka broker", False,
                     f"cannot reach the broker at {bootstrap} ({sentence(exc)}): check that "
                     "it runs and that KAFKA_BOOTSTRAP_SERVERS names it")
    return Check("Kafka broker", True, f"{bootstrap}: reachable, {len(mine)} topic(s) of ours")


def subscriptions_check(store: Store) -> Check:
    """Every enabled user should hold a live Graph subscription (the subscriptions role
    renews them); one missing or expired means that user's Outlook changes wait for a Sync."""
    from datetime import UTC, datetime

    from contactsync.console.views import subscription_state

    try:
        now = datetime.now(UTC)
        states = [subscription_state(store.subscriptions.list_all(user_id=s.user_id), now).state
                  for s in store.setups.list_all(enabled=True)]
    except Exception as exc:
        return Check("Subscriptions", False, sentence(exc))
    unhealthy = sum(1 for state in states if state in ("none", "expired"))
    detail = (f"{len(states)} enabled user(s): {states.count('active')} active, "
              f"{states.count('expiring')} expiring within the hour, "
              f"{states.count('expired')} expired, {states.count('none')} without one")
    if unhealthy:
        detail += ": is the subscriptions role running (`contactsync run` starts it)?"
    return Check("Subscriptions", unhealthy == 0, detail)


# As the ContactsyncChangesNotApplied alert (deploy/prometheus/alerts.yaml): older is failing.
NOT_APPLIED_ALERT_S = 900.0
ROLES_ONLY = ("not known in this process: the roles report it where they run "
              "(`contactsync run --console-port P` shows it here)")


def samples(name: str) -> list[tuple[dict[str, str], float]]:
    """The series `name` as this process's /metrics shows it: (labels, value) per sample."""
    from contactsync.metrics import REGISTRY

    return [(dict(s.labels), s.value) for family in REGISTRY.collect()
            for s in family.samples if s.name == name]


def credentials_check() -> Check:
    """As /readyz: each service's `<scope>_credentials` component, and any refused now."""
    from contactsync.credential_health import HEALTH

    refused = HEALTH.refused()
    if refused:
        return Check("Credentials", False, "; ".join(
            f"{scope}: {why}" for scope, why in sorted(refused.items())))
    seen = sorted(labels["component"].removesuffix("_credentials")
                  for labels, value in samples("contactsync_component_ready")
                  if labels.get("component", "").endswith("_credentials") and value == 1)
    if not seen:
        return Check("Credentials", None, ROLES_ONLY)
    return Check("Credentials", True, f"tokens issued for {', '.join(seen)}")


def lag_checks(prefix: str = "") -> list[Check]:
    """Consumer lag per role (its consumer group, named with the topic `prefix`), as
    contactsync_consumer_lag and contactsync_oldest_unapplied_change_age_seconds show it."""
    lag: dict[str, float] = {}
    for labels, value in samples("contactsync_consumer_lag"):
        lag[labels["group"]] = lag.get(labels["group"], 0.0) + value
    ages = {labels["group"]: value for labels, value in samples(
        "contactsync_oldest_unapplied_change_age_seconds")}
    if not lag and not ages:
        return []
    return [_lag_check(group.removeprefix(prefix).removeprefix("contactsync-"),
                       lag.get(group, 0.0), ages.get(group, 0.0))
            for group in sorted(set(lag) | set(ages))]


def _lag_check(role: str, lag: float, age: float, where: str = "") -> Check:
    detail = (f"{lag:.0f} record(s) not yet consumed; oldest change not finished {age:.0f} s "
              "ago" if age else f"{lag:.0f} record(s) not yet consumed; caught up") + where
    if age > NOT_APPLIED_ALERT_S:
        detail += ": is the role stuck? Its log names the record it waits on"
    return Check(f"Consumer lag: {role}", age <= NOT_APPLIED_ALERT_S, detail)


def kafka_lag_checks(backlog: Backlog | None, why: str) -> list[Check]:
    """Consumer lag per role from the broker (committed against end offsets): what a console
    without the roles in its process shows."""
    if backlog is None:
        return [Check("Consumer lag", None, f"not known: {why}")]
    if not backlog.roles:
        return [Check("Consumer lag", None, "no role's consumer group on the broker yet: "
                      "start the pipeline with `contactsync run`")]
    return [_lag_check(role.role, role.lag, 0.0 if role.oldest is None else max(
        0.0, (backlog.at - role.oldest).total_seconds()), " (committed offsets)")
        for role in backlog.roles]


def checks(settings: Settings, store: Store, backlog: BacklogView | None = None,
           ) -> list[Check]:
    # The roles of `contactsync run` measure their own lag; elsewhere the broker says.
    in_process = lag_checks(settings.topic_prefix)
    if not in_process:
        in_process = (kafka_lag_checks(*backlog.get()) if backlog is not None
                      else [Check("Consumer lag", None, ROLES_ONLY)])
    return [broker_check(settings), store_check(store), subscriptions_check(store),
            credentials_check(), *in_process]
