"""The reliability scenarios, each a function that runs a deployment (harness.Deployment) through
one kind of trouble and returns an `Outcome`: changes sent, lost, duplicated, time to converge.
The tests (short form) and `python -m tests.reliability.report` (long form) call the same
functions with different sizes."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from contactsync.kafka.local_broker import LocalBroker, free_port
from contactsync.settings import Settings, default_cache_dir
from tests.reliability.harness import CRASHABLE, Deployment, Ledger, eventually

CONVERGE_BOUND_S = 90.0  # after the last change: every scenario must be converged by then
# What an operator may expect after a crashed role restarts (static group membership gives
# the partitions back at once); the report says whether a run met it.
CRASH_CONVERGE_TARGET_S = 15.0


@dataclass
class Outcome:
    scenario: str
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    converge_s: float = 0.0
    reconcile_writes: int = 0
    deadletters: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reconcile_writes or self.deadletters
                    or self.problems)


def settle(dep: Deployment, ledger: Ledger, last_change: float, outcome: Outcome,
           bound: float = CONVERGE_BOUND_S) -> Outcome:
    """Wait for convergence (bounded), then record what is still wrong, if anything. A Full
    sync ("reconcile") afterwards must find nothing to write: the pipeline converged alone."""
    with contextlib.suppress(AssertionError):
        eventually(lambda: not dep.problems(ledger), bound, "both sides converged")
    outcome.converge_s = round(time.monotonic() - last_change, 1)
    dep.quiet(2.0)
    outcome.problems = dep.problems(ledger)
    outcome.lost = len(dep.lost(ledger))
    outcome.duplicated = dep.duplicates()
    outcome.sent = ledger.sent
    (dep.workdir / "timeline.txt").write_text("\n".join(ledger.timeline) + "\n")
    outcome.deadletters = dep.deadletters()
    dep.assert_alive()
    outcome.reconcile_writes = dep.reconcile()
    return outcome


def crash(workdir: Path, bootstrap: str, *, seed: int, rounds: int, changes: int,
          kills: int, database_url: str | None = None) -> Outcome:
    """A seeded stream of changes on both sides for three users while role processes are
    killed with SIGKILL at random points and restarted after a random pause."""
    outcome = Outcome(f"crash (seed {seed}, {rounds} rounds x {changes} changes, "
                      f"{kills} kill -9 per round)")
    with Deployment(workdir, bootstrap, database_url=database_url) as dep:
        dep.setup(contacts=12, seed=seed)
        dep.start_all()
        ledger = Ledger()
        step = 0
        order = list(CRASHABLE)
        for r in range(rounds):
            rng = random.Random(seed * 1000 + r)
            kill_at = sorted(rng.sample(range(changes), min(kills, changes)))
            for i in range(changes):
                dep.random_change(rng, ledger, step)
                step += 1
                if i in kill_at:
                    # Every role dies at least once before any dies twice.
                    role = order.pop(0) if order else rng.choice(CRASHABLE)
                    time.sleep(rng.uniform(0, 0.4))  # somewhere inside the work in flight
                    dep.kill9(role)
                    ledger.timeline.append(f"{time.strftime('%H:%M:%S')} kill -9 {role}")
                    time.sleep(rng.uniform(0.2, 1.5))
                    dep.start_role(role)
                    ledger.timeline.append(f"{time.strftime('%H:%M:%S')} {role} restarted")
                time.sleep(rng.uniform(0.02, 0.25))
            dep.assert_alive()
        outcome.notes.append("killed: " + ", ".join(dep.kills))
        settle(dep, ledger, time.monotonic(), outcome)
        met = outcome.converge_s < CRASH_CONVERGE_TARGET_S
        outcome.notes.append(f"target < {CRASH_CONVERGE_TARGET_S:.0f} s: "
                             f"{'met' if met else 'MISSED'}")
        return outcome


def broker_outage(workdir: Path, *, seed: int, changes: int, outage_s: float) -> Outcome:
    """The broker stops mid-stream and comes back: the webhook answers 503 meanwhile, the
    emulators retry their deliveries, the roles reconnect; nothing is lost."""
    import httpx

    outcome = Outcome(f"broker outage ({outage_s:.0f} s, {changes} changes, seed {seed})")
    broker = LocalBroker(workdir / "private-kafka", version=Settings().kafka_version,
                         cache_dir=default_cache_dir())
    bootstrap = broker.up()
    try:
        with Deployment(workdir, bootstrap) as dep:
            dep.setup(contacts=10, seed=seed)
            dep.start_all()
            ledger = Ledger()
            rng = random.Random(seed)
            for step in range(changes // 2):
                dep.random_change(rng, ledger, step)
                time.sleep(0.1)
            broker.down()
            # While the broker is away, the webhook refuses with 503 (and Retry-After).
            sub = dep.store.subscriptions.list_all()[0]
            probe = {"value": [{
                "subscriptionId": sub.subscription_id, "clientState": sub.client_state,
                "changeType": "updated", "resource": "Users/x/Contacts/y",
                "resourceData": {"id": "y"}, "tenantId": "t",
                "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}]}
            route = "/webhooks/bc" if sub.service.value == "bc" else "/webhooks/graph"
            if route == "/webhooks/bc":
                probe = {"value": [{"subscriptionId": sub.subscription_id,
                                    "clientState": sub.client_state, "changeType": "updated",
                                    "resource": "companies(x)/contacts(y)",
                                    "lastModifiedDateTime": "2030-01-01T00:00:00Z"}]}
            answer = httpx.post(dep.settings.webhook_public_url + route, json=probe, timeout=30)
            outcome.notes.append(f"webhook while the broker was down: {answer.status_code} "
                                 f"Retry-After={answer.headers.get('retry-after')}")
            if answer.status_code != 503:
                outcome.problems.append(f"webhook answered {answer.status_code}, not 503, "
                                        "while the broker was down")
            for step in range(changes // 2, changes):
                dep.random_change(rng, ledger, step)
                time.sleep(max(0.0, outage_s / max(1, changes - changes // 2)))
            broker.up()
            last = time.monotonic()
            problems_before = list(outcome.problems)
            settle(dep, ledger, last, outcome, bound=150.0)
            outcome.problems = problems_before + outcome.problems
            return outcome
    finally:
        broker.down()


def private_port() -> int:
    return free_port()


# ----- service faults: one deployment, one phase after the other ------------------------------

FAULT_BOUND_S = 60.0  # each fault phase converges within this, counted from its last change


def _graph_sub(dep: Deployment, mailbox: str) -> str:
    from contactsync.store.records import SubscriptionService

    [sub] = dep.store.subscriptions.list_all(service=SubscriptionService.GRAPH, user_id=mailbox)
    return str(sub.subscription_id)


def _inject(dep: Deployment, phase: str, rng: random.Random) -> tuple[str, str]:
    """Arm the phase's fault; returns (the side its changes should be made on, a note)."""
    graph, bc = dep.emulators.graph, dep.emulators.bc
    anna = dep.users[0].mailbox
    if phase == "graph_429_storm":
        graph.throttle_storm("*", 4.0)
        return "outlook", "every mailbox answers 429 (Retry-After) for 4 s"
    if phase == "bc_429_storm":
        bc.throttle_burst(4.0)
        return "", "BC answers 429 for 4 s"
    if phase == "5xx":
        graph.add_fault(kind="status", status=503, count=4, route="contacts")
        bc.inject_fault(kind="status", status=500, count=3, route="contacts")
        bc.inject_fault(kind="status", status=502, count=2, route="contacts")
        graph.add_fault(kind="drop_response", status=504, count=1, route="contacts",
                        method="POST")
        bc.inject_fault(kind="drop_response", status=504, count=1, route="contacts",
                        method="POST")
        return "", "503/500/502 on contacts, and one create each side that landed but " \
                   "answered 504"
    if phase == "slow_answers":
        graph.add_fault(kind="latency", seconds=1.5, count=3, route="contacts")
        bc.inject_fault(kind="latency", seconds=1.5, count=3, route="contacts")
        return "", "3 answers on each side take 1.5 s"
    if phase == "412_conflicts":
        bc.inject_fault(kind="status", status=412, count=2, route="contacts", method="PATCH")
        return "outlook", "two BC updates answered 412, plus edits of one contact on both sides"
    if phase == "expired_delta_tokens":
        n = graph.expire_delta_tokens()
        return "outlook", f"{n} delta tokens expired (410 on next use)"
    if phase == "dropped_notifications":
        graph.drop_notifications(2)
        bc.notification_faults(drop=2)
        return "", "the next 2 notifications of each service are lost"
    if phase == "duplicated_notifications":
        graph.duplicate_notifications(3)
        bc.notification_faults(duplicate=3)
        return "", "the next 3 notifications of each service arrive twice"
    if phase == "lifecycle_missed":
        graph.drop_notifications(3)
        return "outlook", "Outlook notifications dropped, then a `missed` lifecycle event"
    if phase == "lifecycle_subscription_removed":
        graph.send_lifecycle(_graph_sub(dep, anna), "subscriptionRemoved")
        return "outlook", "anna's subscription removed, with a subscriptionRemoved event"
    if phase == "lifecycle_reauthorization_required":
        graph.send_lifecycle(_graph_sub(dep, anna), "reauthorizationRequired")
        return "outlook", "reauthorizationRequired for anna's subscription"
    if phase == "subscription_deleted_silently":
        graph.remove_subscription(_graph_sub(dep, anna), notify=False)
        return "outlook", "anna's subscription deleted at Graph, nobody told"
    raise ValueError(phase)


FAULT_PHASES = (
    "graph_429_storm", "bc_429_storm", "5xx", "slow_answers", "412_conflicts",
    "expired_delta_tokens", "dropped_notifications", "duplicated_notifications",
    "lifecycle_missed", "lifecycle_subscription_removed",
    "lifecycle_reauthorization_required", "subscription_deleted_silently",
)


def fault_phase(dep: Deployment, phase: str, *, seed: int, changes: int) -> Outcome:
    """One fault armed, `changes` changes made, then: converged within FAULT_BOUND_S, nothing
    lost or duplicated, no dead letter, a Full sync finds nothing to do."""
    rng = random.Random(f"{seed}-{phase}")
    outcome = Outcome(phase)
    dead_before = dep.deadletters()
    side, note = _inject(dep, phase, rng)
    outcome.notes.append(note)
    ledger = Ledger()
    for step in range(changes):
        dep.random_change(rng, ledger, step, side)
        time.sleep(0.15)
    if phase == "412_conflicts":
        # A real conflict: the same contact edited in Outlook, then in BC; BC must win.
        anna = dep.users[0].mailbox
        from tests.reliability.harness import BC_ID_PROPERTY, syncable

        target = next(c for c in dep.bc_contacts() if syncable(c))
        oc = next(o for o in dep.folder(anna) if o["_ext"].get(BC_ID_PROPERTY) == target["id"])
        dep.emulators.graph.person_update_contact(anna, oc["id"], {"jobTitle": "Outlook"})
        dep.emulators.bc.update_contact(target["id"], {"jobTitle": "BC wins"})
        ledger.bc_edits[target["id"]] = "BC wins"
        ledger.outlook_edits.pop(target["id"], None)
        ledger.sent += 2
    if phase == "dropped_notifications":
        # BC's lost hints are answered by the change feed's polling. Graph's are answered by
        # the folder's next notification (one delta read returns every change since the last
        # one); with no later change, by the reconcile (the `missed` phase covers Graph telling
        # us). So once both drops are spent, one more Outlook edit.
        eventually(lambda: dep.emulators.graph.notifier.drop_next == 0, 30,
                   "the dropped notifications spent")
        dep.random_change(rng, ledger, changes, "outlook")
    if phase == "lifecycle_missed":
        time.sleep(1.0)  # the dropped notifications are gone by now
        dep.emulators.graph.send_lifecycle(_graph_sub(dep, dep.users[0].mailbox), "missed")
    last = time.monotonic()
    settle(dep, ledger, last, outcome, bound=FAULT_BOUND_S)
    outcome.deadletters -= dead_before
    dep.emulators.graph.clear_faults()
    dep.emulators.bc.faults.clear()
    return outcome


def fault_deployment(workdir: Path, bootstrap: str) -> Deployment:
    dep = Deployment(workdir, bootstrap)
    dep.setup(contacts=10, seed=11)
    dep.start_all()
    return dep
