"""`contactsync dlq list|replay`: look at the dead-letter topic and send letters back.

`list` reads the topic from the beginning with a group-less consumer (it commits nothing).
`replay` re-publishes a dead letter's original key, value and headers to its source topic (or
`--to-topic`), waits for the broker's ack, then records the replay in the replayer's consumer
group (see contactsync.kafka.deadletter): replaying again skips it unless `--force`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from contactsync.cli.common import kafka_bootstrap, settings_and_logging, user_errors

# Kafka (kafka-python, contactsync.kafka.*) loads when a dlq command runs, not at CLI start.
if TYPE_CHECKING:
    from contactsync.kafka.deadletter import DeadLetterEntry, ReplayLedger
    from contactsync.settings import Settings

dlq_app = typer.Typer(no_args_is_help=True, help="The dead-letter topic: list and replay.")


def load_dead_letters(settings: Settings) -> tuple[str, list[DeadLetterEntry], ReplayLedger]:
    from contactsync.kafka.deadletter import (
        ReplayLedger,
        mark_replayed,
        read_dead_letters,
        replay_group,
    )
    from contactsync.kafka.topics import DEADLETTER, topic_name

    kafka_bootstrap(settings)  # no broker: one sentence, in seconds
    topic = topic_name(settings, DEADLETTER)
    entries = read_dead_letters(settings, topic)
    ledger = ReplayLedger(settings, replay_group(settings), topic)
    ledger.load(sorted({e.partition for e in entries}))
    return topic, mark_replayed(entries, ledger), ledger


def _line(entry: DeadLetterEntry) -> str:
    s = entry.summary()
    source = (f"{s['source_topic']}[{s['source_partition']}]@{s['source_offset']}"
              if s["source_topic"] else "?")
    flag = "replayed" if s["replayed"] else "-"
    return (f"{s['failed_at'][:23]:<23}  {entry.partition}:{entry.offset:<8} {source:<40} "
            f"{s['key'] or '-':<20} {flag:<8}  {s['reason']}")


@dlq_app.command("list")
def list_letters(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1,
                                       help="Show the N most recent dead letters")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts")] = False,
) -> None:
    """Dead letters: when, where from (topic, partition, offset), key, reason, replayed?"""
    settings = settings_and_logging()
    with user_errors():
        _, entries, ledger = load_dead_letters(settings)
        ledger.close()
    newest = sorted(entries, key=lambda e: (e.timestamp_ms, e.partition, e.offset))[-limit:]
    if as_json:
        typer.echo(json.dumps([e.summary() for e in newest], indent=2))
        return
    if not newest:
        typer.echo("no dead letters")
        return
    typer.echo(f"{'FAILED AT':<23}  {'DLQ P:OFF':<10} {'SOURCE':<40} {'KEY':<20} "
               f"{'REPLAYED':<8}  REASON")
    for entry in newest:
        typer.echo(_line(entry))
    if len(entries) > len(newest):
        typer.echo(f"({len(entries) - len(newest)} older not shown; use --limit)")


def _select(entries: Sequence[DeadLetterEntry], wanted: Sequence[str]) -> list[DeadLetterEntry]:
    """`N` (an offset found in exactly one partition) or `P:N`."""
    chosen: list[DeadLetterEntry] = []
    for spec in wanted:
        partition_text, _, offset_text = spec.rpartition(":")
        if not offset_text.isdigit() or (partition_text and not partition_text.isdigit()):
            raise typer.BadParameter(f"{spec!r}: use OFFSET or PARTITION:OFFSET",
                                     param_hint="--offset")
        offset = int(offset_text)
        matches = [e for e in entries if e.offset == offset
                   and (not partition_text or e.partition == int(partition_text))]
        if not matches:
            raise typer.BadParameter(f"no dead letter at {spec}", param_hint="--offset")
        if len(matches) > 1:
            where = ", ".join(f"{e.partition}:{e.offset}" for e in matches)
            raise typer.BadParameter(f"offset {offset} is in several partitions ({where}): "
                                     "say which as PARTITION:OFFSET", param_hint="--offset")
        chosen.append(matches[0])
    return chosen


@dlq_app.command()
def replay(
    replay_all: Annotated[bool, typer.Option("--all", help="Every dead letter not replayed yet")]
    = False,
    offsets: Annotated[list[str] | None, typer.Option(
        "--offset", help="A dead letter's OFFSET or PARTITION:OFFSET (as `dlq list` shows it); "
        "repeatable")] = None,
    to_topic: Annotated[str | None, typer.Option(
        "--to-topic", help="Publish here (full topic name) instead of the source topic")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replay even if replayed before")]
    = False,
) -> None:
    """Re-publish dead letters to their source topic, once each."""
    from contactsync.kafka.deadletter import replay_entries
    from contactsync.kafka.io import make_producer

    if replay_all == bool(offsets):
        raise typer.BadParameter("give either --all or one or more --offset")
    settings = settings_and_logging()
    with user_errors():
        _, entries, ledger = load_dead_letters(settings)
        try:
            chosen = list(entries) if replay_all else _select(entries, offsets or [])
            producer = make_producer(settings, client_id="contactsync-dlq-replay")
            try:
                outcomes = replay_entries(chosen, ledger, producer, to_topic=to_topic,
                                          force=force)
            finally:
                producer.close(timeout=10)
        finally:
            ledger.close()
    counts = {"replayed": 0, "already_replayed": 0, "unreadable": 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
        where = f"{outcome.entry.partition}:{outcome.entry.offset}"
        if outcome.status == "replayed":
            typer.echo(f"replayed {where} -> {outcome.target}")
        elif outcome.status == "unreadable" or not replay_all:
            typer.echo(f"skipped  {where} ({outcome.status.replace('_', ' ')})")
    typer.echo(f"{counts['replayed']} replayed, {counts['already_replayed']} already replayed, "
               f"{counts['unreadable']} unreadable")
