"""The README's main-job command: `contactsync sandbox --demo` runs everything and stops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.kafka_fixtures import KafkaHandle

pytestmark = pytest.mark.kafka


def test_sandbox_demo_syncs_every_user_shows_edits_arriving_and_stops_cleanly(
    kafka: KafkaHandle, tmp_path: Path
):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
               CONTACTSYNC_STATE_DIR=str(tmp_path), CONTACTSYNC_LOG_LEVEL="WARNING")
    for var in ("CONTACTSYNC_GRAPH_BASE_URL", "CONTACTSYNC_BC_BASE_URL", "AZURE_CLIENT_ID"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"  # the start lines arrive while the sandbox runs
    exe = str(Path(sys.executable).parent / "contactsync")
    proc = subprocess.Popen([exe, "sandbox", "--demo", "--duration", "25", "--contacts", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        console_page, start_lines = _console_users_page(proc)
        rest, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest[-2000:] + err[-2000:]
    out = start_lines + rest
    # The sandbox printed its console's URL, and the console answered with the sandbox users.
    assert console_page is not None, out[-2000:]
    assert all(mailbox in console_page for mailbox in
               ("anna@contoso.test", "ben@contoso.test", "chloe@contoso.test"))
    assert "dead letters: 0" in out and out.rstrip().endswith("stopped")
    folders = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"^(\S+@contoso\.test): (\d+) contacts in the folder", out, re.MULTILINE)}
    # Everyone got a folder of their own: 60 persons, one without an email; ben's filter
    # (Seattle|Redmond) and chloe's (DK|GB) each select two of the six seeded cities.
    assert set(folders) == {"anna@contoso.test", "ben@contoso.test", "chloe@contoso.test"}
    assert folders["anna@contoso.test"] == 59, out[-3000:]
    assert 0 < folders["ben@contoso.test"] < 59 and 0 < folders["chloe@contoso.test"] < 59
    # The demo's edits arrived: updates flowed after the first full syncs.
    updates = sum(int(n) for n in re.findall(r"'updated_(?:outlook|bc)': (\d+)", out))
    assert updates > 0


def _console_users_page(proc: subprocess.Popen[str]) -> tuple[str | None, str]:
    """The console's Users page, fetched at the URL the sandbox printed; and the lines read."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = re.match(r"console (http://127\.0\.0\.1:\d+/)", line)
        if found:
            page = httpx.get(f"{found.group(1)}users", timeout=30)
            return (page.text if page.status_code == 200 else None), "".join(lines)
    return None, "".join(lines)
