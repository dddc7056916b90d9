"""A new BC admin's usual mistakes (issue 17, "Data safety"), run as they would: `contactsync`
as a real process against the emulators, seeded as README's `emulate --seed 200` seeds them.

Each case asserts the exit code, a short answer with no traceback, the sentence's key words,
and that nothing changed on either side (no write reached Graph or BC, the setups stayed).
With CONTACTSYNC_CASES_LOG=FILE every case appends {case, lines, seconds, exit} to FILE (the
issue's before/after table); CONTACTSYNC_CASES_PYTHONPATH runs another checkout's code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import inspect, text

from contactsync.cli.main import app
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, seed_emulators, start_emulators
from contactsync.engine.bcfilter import FILTERABLE_FIELDS, ContactFilter
from contactsync.engine.pair_rules import bc_skip_reason
from contactsync.store import create_db_engine
from tests.store.legacy import write_v2_setups

EXE = str(Path(sys.executable).parent / "contactsync")
README = Path(__file__).resolve().parents[2] / "README.md"
USER1 = "user1@contoso.test"  # a seeded mailbox; its "Business Central" folder holds 25
REFUSED = (1, 2)  # an error, or a bad command line: both refuse before acting
SHORT = 8  # lines: one sentence (a filter error adds the expression and its caret)


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def lines(self) -> int:
        return len(self.text.splitlines())

    def refused(self, *words: str) -> None:
        """Refused in a short answer that says why, without a traceback."""
        assert self.code in REFUSED, self.text[-3000:]
        assert "Traceback" not in self.text and self.lines <= SHORT, self.text[-3000:]
        for word in words:
            assert word in self.text, f"{word!r} not in: {self.text}"


def run_cli(env: dict[str, str], cwd: Path, *args: str, case: str = "") -> Run:
    """`contactsync ARGS` as a process; a named case is logged (module docstring)."""
    if other := os.environ.get("CONTACTSYNC_CASES_PYTHONPATH"):
        env = dict(env, PYTHONPATH=other)
    started = time.monotonic()
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=180, check=False)
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    if case and (log := os.environ.get("CONTACTSYNC_CASES_LOG")):
        with open(log, "a") as f:
            f.write(json.dumps({"case": case, "lines": run.lines,
                                "seconds": round(run.seconds, 2), "exit": run.code}) + "\n")
    return run


@dataclass
class Admin:
    emulators: RunningEmulators
    db_url: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def point_at(self, emulators: RunningEmulators) -> None:
        self.emulators = emulators
        self.env = dict(os.environ, CONTACTSYNC_GRAPH_BASE_URL=emulators.graph_base_url,
                        CONTACTSYNC_BC_BASE_URL=emulators.bc_base_url,
                        CONTACTSYNC_BC_COMPANY=emulators.bc.company_id,
                        CONTACTSYNC_DATABASE_URL=self.db_url,
                        CONTACTSYNC_STATE_DIR=str(self.tmp / "state"),
                        CONTACTSYNC_LOG_LEVEL="WARNING")
        self.env.pop("AZURE_CLIENT_ID", None)

    def run(self, *args: str, case: str = "") -> Run:
        return run_cli(self.env, self.tmp, *args, case=case)

    def both_sides(self) -> tuple[Any, ...]:
        """What a mistake must leave as it was: writes made to Graph and BC, the setups."""
        writes = sum(r["count"] for snap in (self.emulators.graph.counters_snapshot(),
                                             self.emulators.bc.counters_snapshot())
                     for r in snap["by_route"] if r["method"] in ("POST", "PATCH", "DELETE"))
        return writes, self.setups()

    def setups(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT user_id, mailbox, folder_name, contact_filter, enabled "
                          "FROM user_setups ORDER BY user_id")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of the store as they are (not migrated: the CLI under test does that)."""
        engine = create_db_engine(self.db_url)
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table("user_setups"):
                    return []
                return [tuple(row) for row in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def folder(self, mailbox: str = USER1) -> list[dict[str, Any]]:
        state = self.emulators.graph.state
        for folder in state.child_folders(state.user(mailbox)):
            if folder.display_name == "Business Central":
                return self.emulators.graph.contacts(mailbox, str(folder.id))
        return []


def seeded() -> RunningEmulators:
    running = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                              bc_config=BcEmulatorConfig.for_tests())
    seed_emulators(running, "200")  # README: contactsync emulate --seed 200
    return running


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    running = seeded()
    world = Admin(running, f"sqlite:///{tmp_path / 'contactsync.db'}", tmp_path)
    world.point_at(running)
    try:
        yield world
    finally:
        world.emulators.stop()


# --- 1. two setups can never share one Outlook folder ----------------------------------------

def test_a_case_variant_or_another_user_id_of_a_mailbox_cannot_take_its_folder(admin: Admin):
    assert admin.run("users", "add", USER1).code == 0
    before = admin.both_sides()

    variant = admin.run("users", "add", USER1.upper(), case="add a case variant of a mailbox")
    variant.refused("already belongs to setup 'user1@contoso.test'", "--folder")
    other_id = admin.run("users", "add", USER1, "--user-id", "anna",
                         case="add a mailbox again under another --user-id")
    other_id.refused("already belongs to setup 'user1@contoso.test'")
    assert admin.both_sides() == before

    # Another folder of the same mailbox is another setup's to take.
    assert admin.run("users", "add", USER1, "--user-id", "anna", "--folder", "Customers").code == 0


def test_a_store_that_already_shares_a_folder_stops_the_later_setup(admin: Admin):
    write_v2_setups(admin.db_url, [(USER1, USER1), ("user1-again", USER1.upper())])
    before = admin.both_sides()

    validated = admin.run("users", "validate", "user1-again", case="validate a setup sharing "
                          "an earlier setup's folder")
    validated.refused("shares folder 'Business Central'", USER1, "stopped")
    synced = admin.run("sync", "user1-again", "--full", case="sync a setup sharing an earlier "
                       "setup's folder")
    synced.refused("stopped", "shares folder")
    reconciled = admin.run("reconcile", "--user", "user1-again", "--inline")
    reconciled.refused("stopped")
    assert admin.both_sides() == before, "nothing synced, nothing changed"
    holder = admin.run("users", "validate", USER1)
    assert holder.code == 0 and "user1-again share this folder and are stopped" in holder.text


# --- 2. a typo never syncs a mailbox ---------------------------------------------------------

@pytest.mark.parametrize(("args", "words", "case"), [
    (["--filter", "city="], ["'city'", "empty expression", "^"], "add with an empty filter"),
    (["--filter", "postalCode=98000...98999"], ["two dots", "^"],
     "add with a three-dot range"),
    (["--folder", "  "], ["folder name is blank"], "add with a blank folder name"),
])
def test_users_add_refuses_a_typo(admin: Admin, args: list[str], words: list[str], case: str):
    before = admin.both_sides()
    admin.run("users", "add", USER1, *args, case=case).refused(*words)
    assert admin.both_sides() == before


def test_users_add_refuses_an_unknown_mailbox(admin: Admin):
    before = admin.both_sides()
    run = admin.run("users", "add", "nobdy@contoso.test", case="add an unknown mailbox")
    run.refused("no mailbox 'nobdy@contoso.test'", "check the address")
    assert admin.both_sides() == before


def test_a_new_setup_starts_disabled_and_enable_says_what_the_first_sync_will_do(admin: Admin):
    writes_before = admin.both_sides()[0]
    added = admin.run("users", "add", USER1, "--filter", "city=Seattle|Redmond",
                      case="add a user (disabled, count shown)")
    assert added.code == 0 and "Traceback" not in added.text and added.lines <= 4, added.text
    selected = int(re.search(r"the filter selects (\d+) BC contacts now", added.out)[1])  # type: ignore[index]
    assert selected == sum(1 for c in admin.emulators.bc.contacts() if bc_skip_reason(
        c, ContactFilter.parse({"city": "Seattle|Redmond"})) is None) > 0
    assert "disabled" in added.out and "users enable" in added.out
    assert [enabled for *_, enabled in admin.setups()] == [False]

    bad_set = admin.run("users", "set", USER1, "--filter", "city=",
                        case="set an empty filter")
    bad_set.refused("'city'", "empty expression")
    bad_set = admin.run("users", "set", USER1, "--filter", "city=Seattle|",
                        case="set a filter with a syntax error")
    bad_set.refused("'city'", "expected a value", "^")
    assert admin.both_sides()[0] == writes_before

    enabled = admin.run("users", "enable", USER1, case="enable: what the first sync will do")
    assert enabled.code == 0 and "Traceback" not in enabled.text, enabled.text
    # The seeded folder holds 25 Outlook contacts of its own: the first sync sends them to BC.
    assert (f"the first sync will create {selected} in Outlook, link 0 found on both sides, "
            "create 25 in BC") in enabled.out
    assert admin.both_sides()[0] == writes_before, "a dry run: nothing written"
    assert [enabled for *_, enabled in admin.setups()] == [True]


def _help_texts() -> Iterator[str]:
    """The help of every command and option of the CLI."""
    stack: list[Any] = [typer.main.get_command(app)]
    while stack:
        command = stack.pop()
        yield command.help or ""
        yield from (getattr(param, "help", None) or "" for param in command.params)
        stack.extend(getattr(command, "commands", {}).values())  # a group's commands


def _filter_examples() -> list[str]:
    """Every FIELD=EXPR example of the CLI's help texts and of README (its commands' --filter
    options, and the filter syntax it shows in backticks)."""
    found = [m for text in _help_texts() for m in re.findall(r'e\.g\. "([A-Za-z]+=[^"]+)"', text)]
    assert found, "the --filter help shows an example"
    readme = README.read_text()
    for line in readme.splitlines():
        if "--filter" in line and line.lstrip().startswith(".venv/bin/contactsync"):
            words = shlex.split(line.split("  #")[0])
            found += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--filter"]
    found += [m.group(0) for m in re.finditer(r"(?<=`)([A-Za-z]+)=[^`]+(?=`)", readme)
              if m.group(1) in FILTERABLE_FIELDS]
    return found


def test_every_filter_example_of_the_help_and_readme_selects_someone_in_the_seed(admin: Admin):
    examples = _filter_examples()
    assert len(examples) >= 6, examples  # the help's, the walk-through's and the syntax list
    persons = admin.emulators.bc.contacts()
    for example in examples:
        field_name, _, expression = example.partition("=")
        parsed = ContactFilter.parse({field_name: expression})
        assert any(bc_skip_reason(c, parsed) is None for c in persons), \
            f"{example!r} selects no seeded contact"


# --- 5. the rail counts the folder's real contacts -------------------------------------------

def test_after_the_store_outlives_the_emulators_the_rail_counts_the_real_folder(admin: Admin):
    # Without create-in-bc, the fresh folder's own 25 contacts are not BC's business: what the
    # rail withholds is then all this run would write.
    assert admin.run("users", "add", USER1, "--enable", "--no-create-in-bc").code == 0
    assert admin.run("sync", USER1, "--full").code == 0
    [(linked,)] = admin.query(f"SELECT count(*) FROM links WHERE user_id = '{USER1}'")
    admin.emulators.stop()  # `emulate` restarted: a fresh folder of 25, the same store
    admin.point_at(seeded())
    before = admin.both_sides()

    stopped = admin.run("sync", USER1, "--full", case="full sync after the emulators "
                        "restarted under a kept store")
    assert stopped.code in (2, 3), stopped.text  # the rail's exit code
    assert "Traceback" not in stopped.text
    assert (f"would remove {linked} contacts: 0 of the 25 in the folder and {linked} linked "
            "ones no longer in it") in stopped.text, stopped.text
    assert admin.both_sides() == before and len(admin.folder()) == 25, "nothing was removed"


# --- 4. the sandbox stops only what it started -----------------------------------------------

@pytest.mark.kafka
def test_the_sandbox_leaves_an_admins_own_broker_running(tmp_path: Path):
    env = dict(os.environ, CONTACTSYNC_STATE_DIR=str(tmp_path / "state"),
               CONTACTSYNC_LOG_LEVEL="WARNING")
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "CONTACTSYNC_GRAPH_BASE_URL",
                "CONTACTSYNC_BC_BASE_URL", "AZURE_CLIENT_ID"):
        env.pop(var, None)

    def kafka(verb: str) -> Run:
        return run_cli(env, tmp_path, "kafka", verb)

    assert kafka("up").code == 0, "the admin's own `kafka up`"
    try:
        sandbox = run_cli(env, tmp_path, "sandbox", "--duration", "3", "--contacts", "20",
                            case="sandbox while the admin's broker runs")
        assert sandbox.code == 0 and "Traceback" not in sandbox.text, sandbox.text[-3000:]
        assert "already running (left running)" in sandbox.text
        status = kafka("status")
        assert status.code == 0 and "running pid=" in status.text, "still running"
    finally:
        assert "stopped" in kafka("down").text
