"""Run an ASGI app under uvicorn in a background thread: a real HTTP server on a real socket.

The product serves its webhook, console and health endpoints on it; the emulators and the tests
use it too (the emulators import the product, never the other way round).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """A uvicorn server in a daemon thread. `start()` returns once it accepts connections."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 tls: tuple[str, str] | None = None) -> None:
        """`tls`: (certificate file, key file) to serve https."""
        self.host = host
        self.port = port or free_port(host)
        self._scheme = "https" if tls else "http"
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", lifespan="on",
            access_log=False, timeout_graceful_shutdown=2,
            # uvicorn's own logging config would give its loggers handlers that bypass the
            # redaction of contactsync.logs (this server also runs the webhook in `contactsync
            # run`); without it their lines go to the root handler and are redacted.
            log_config=None,
            ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve()), name=f"http-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
