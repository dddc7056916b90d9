"""A small HTTP/1.1 relay in front of an emulator, on the test's own event loop, that can break
exchanges the way networks and servers do: an answer cut off midway, a kept-alive connection
closed as the next request arrives. It also serves as a forward proxy (absolute-form requests,
CONNECT tunnels), and records what it relayed.

Only what the emulators send is understood: bodies framed by Content-Length."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Relayed:
    request_line: str  # as the client sent it (absolute-form through a proxy)
    response_head: str  # "" when the relay answered nothing


@dataclass
class Breakage:
    """Breaks the next request whose method and path match."""

    method: str
    path_part: str
    kind: str  # "cut_answer": relay it, then send half the answer and close;
    # "close_unanswered": on a kept-alive connection, close without relaying it


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        return head, await reader.readexactly(_content_length(head))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()


@dataclass
class ForwardingProxy:
    upstream_port: int
    breakages: list[Breakage] = field(default_factory=list)
    relayed: list[Relayed] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)  # both ends, all open
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ForwardingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # the handlers see their connections end, and return
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers)
        await self._server.wait_closed()

    def _breakage(self, request_line: str, reused: bool) -> Breakage | None:
        method, target = request_line.split(" ")[:2]
        for b in self.breakages:
            if (b.method == method and b.path_part in target
                    and (reused or b.kind != "close_unanswered")):
                self.breakages.remove(b)
                return b
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        try:
            reused = False
            while (request := await _read_message(reader)) is not None:
                head, body = request
                request_line = head.split(b"\r\n", 1)[0].decode()
                if request_line.startswith("CONNECT "):  # a tunnel to the (TLS) upstream
                    self.relayed.append(Relayed(request_line, "HTTP/1.1 200"))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                    return
                breakage = self._breakage(request_line, reused)
                if breakage is not None and breakage.kind == "close_unanswered":
                    self.relayed.append(Relayed(request_line, ""))
                    return
                method, target, version = request_line.split(" ")
                path = urlsplit(target)._replace(scheme="", netloc="").geturl()  # proxied: absolute
                up_writer.write(f"{method} {path} {version}".encode() + head[len(request_line):]
                                + body)
                await up_writer.drain()
                answer = await _read_message(up_reader)
                assert answer is not None, "the emulator closed the connection"
                answer_head, answer_body = answer
                self.relayed.append(Relayed(request_line, answer_head.decode("latin-1")))
                if breakage is not None:  # cut_answer: the write landed, its answer is lost
                    writer.write(answer_head + answer_body[: len(answer_body) // 2])
                    await writer.drain()
                    return
                writer.write(answer_head + answer_body)
                await writer.drain()
                reused = True
        finally:
            self._writers -= {writer, up_writer}
            self._handlers.discard(handler)
            writer.close()
            up_writer.close()
