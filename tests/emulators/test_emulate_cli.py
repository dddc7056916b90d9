"""`contactsync emulate` starts both emulators; the product's clients work against the URLs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient


def _read_urls(proc: subprocess.Popen[str], timeout: float = 30) -> dict[str, str]:
    urls: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(urls) < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "=" in line and line.startswith("CONTACTSYNC_"):
            key, value = line.strip().split("=", 1)
            urls[key] = value
    return urls


async def test_emulate_prints_base_urls_that_the_product_clients_use():
    exe = str(Path(sys.executable).parent / "contactsync")
    proc = subprocess.Popen([exe, "emulate", "--seed", "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        urls = _read_urls(proc)
        assert urls["CONTACTSYNC_GRAPH_BASE_URL"].endswith("/v1.0")
        assert urls["CONTACTSYNC_BC_BASE_URL"].endswith("/api/v2.0")
        async with await BcClient.create(urls["CONTACTSYNC_BC_BASE_URL"],
                                         urls["CONTACTSYNC_BC_COMPANY"]) as bc:
            contacts = await bc.list_contacts("type eq 'Person'")
            assert len(contacts) >= 40
        graph = GraphClient.create(urls["CONTACTSYNC_GRAPH_BASE_URL"])
        try:
            folder = await graph.find_or_create_folder("user1@contoso.test")
            assert len(await graph.list_contacts("user1@contoso.test", folder)) == 25
        finally:
            await graph.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
