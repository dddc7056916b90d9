"""`contactsync console` as an admin starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

EXE = str(Path(sys.executable).parent / "contactsync")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_refused(tmp_path: Path, args: list[str], host_option: str) -> None:
    run = subprocess.run([EXE, *args, host_option, "0.0.0.0"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, check=False)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0  # one sentence, no traceback
    assert f"only listens on loopback: use {host_option} 127.0.0.1" in run.stderr


def test_refuses_a_non_loopback_host_without_sign_in(tmp_path: Path):
    _assert_refused(tmp_path, ["console", "--port", "8099"], "--host")


def test_run_refuses_a_console_on_a_non_loopback_host_without_sign_in(tmp_path: Path):
    _assert_refused(tmp_path, ["run", "--console-port", "8099"], "--console-host")


def test_run_refuses_a_console_port_in_use_in_one_sentence(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([EXE, "run", "--console-port", str(port)], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path, check=False)
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    assert f"the console cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "choose another --console-port" in run.stderr


def test_serves_the_users_page_on_loopback(tmp_path: Path):
    from contactsync.store import Store
    from tests.console.conftest import seed

    db = f"sqlite:///{tmp_path / 'state.db'}"
    with Store.open(db) as store:
        seed(store)
    port = _free_port()
    env = {**os.environ, "CONTACTSYNC_DATABASE_URL": db, "CONTACTSYNC_LOG_LEVEL": "WARNING",
           # no broker: the pages still show the store; the results feed retries quietly
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    proc = subprocess.Popen([EXE, "console", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        page = None
        for _ in range(100):  # until it listens (not a timing assertion: it bounds a wait)
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/users", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert page is not None and page.status_code == 200
        assert 'data-user="bob@contoso.com"' in page.text
        css = httpx.get(f"http://127.0.0.1:{port}/static/console.css", timeout=5)
        assert css.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
