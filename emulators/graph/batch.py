"""JSON batching: `POST /v1.0/$batch` (reference 4.3).

Each inner request is replayed through the whole ASGI app (counting, faults, per-mailbox
throttling and the same handlers), at most `batch_parallelism` at a time as Graph dispatches
them to Outlook. `dependsOn` sequences a request after others; if one of those failed it gets
424 without running. Responses come back in completion order (Graph promises no order).

What an inner request gets is what the same request alone gets, as "Combine multiple HTTP
requests using JSON batching" (learn.microsoft.com/graph/json-batching) describes: its own
"headers" (so a PATCH's If-Match is compared: a stale changeKey answers 412 with Graph's error
body, or 409 under `stale_change_key_status`), its own status and body (404 for a contact that
is gone). "Throttling and batching" (learn.microsoft.com/graph/throttling) says both that each
inner request is evaluated against the limits on its own (an inner 429 with its own
Retry-After: the per-mailbox throttle runs per inner request here) and that "the batch itself
fails with 424": the readings differ, so both are played, the second as an injected fault on
route "$batch" (424, 429, 5xx, or a lost answer after the inner requests ran).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message

from .config import GraphEmulatorConfig
from .model import dumps, invalid, new_guid

# What an inner request inherits from the batch request. Not Prefer: preferences such as
# IdType="ImmutableId" apply per request ("This header only applies to the request it is included
# with", learn.microsoft.com/graph/outlook-immutable-id); an inner request carries its own in its
# "headers" (learn.microsoft.com/graph/json-batching, "Creating a batch request").
_FORWARDED = (b"host", b"authorization", b"client-request-id")


def _fail_dependency(req_id: str) -> dict[str, Any]:
    return {
        "id": req_id,
        "status": 424,
        "headers": {"Content-Type": "application/json"},
        "body": {
            "error": {
                "code": "FailedDependency",
                "message": "The request depends on a request that failed.",
                "innerError": {"request-id": new_guid()},
            }
        },
    }


def _validate(body: Any, limit: int) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise invalid("Invalid batch payload format.", "BadRequest")
    reqs: list[dict[str, Any]] = body["requests"]
    if len(reqs) > limit:
        raise invalid(
            f"Number of requests in the batch exceeds the limit of {limit}.", "BadRequest"
        )
    ids: set[str] = set()
    for r in reqs:
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not r["id"]:
            raise invalid("Each batch request needs a string 'id'.", "BadRequest")
        if r["id"] in ids:
            raise invalid(f"Batch request id '{r['id']}' is not unique.", "BadRequest")
        ids.add(r["id"])
        if not isinstance(r.get("method"), str) or not isinstance(r.get("url"), str):
            raise invalid("Each batch request needs 'method' and 'url'.", "BadRequest")
        headers = r.get("headers") or {}
        if (
            "body" in r
            and r["body"] is not None
            and not any(k.lower() == "content-type" for k in headers)
        ):
            raise invalid(
                "Content-Type header must be specified for a request with a body.", "BadRequest"
            )
    graph: dict[str, list[str]] = {}
    for r in reqs:
        deps = r.get("dependsOn") or []
        if not isinstance(deps, list) or any(d not in ids or d == r["id"] for d in deps):
            raise invalid(f"dependsOn of '{r['id']}' must name other requests.", "BadRequest")
        graph[r["id"]] = deps
    marks: dict[str, int] = {}

    def visit(node: str) -> None:  # depth-first: 1 = on the path, 2 = done
        if marks.get(node) == 1:
            raise invalid("dependsOn forms a cycle.", "BadRequest")
        if marks.get(node) != 2:
            marks[node] = 1
            for dep in graph[node]:
                visit(dep)
            marks[node] = 2

    for node in graph:
        visit(node)
    return reqs


async def run_batch(app: ASGIApp, request: Request, config: GraphEmulatorConfig) -> bytes:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise invalid("Invalid batch payload format.", "BadRequest") from exc
    reqs = _validate(body, config.batch_max_requests)
    sem = asyncio.Semaphore(config.batch_parallelism)
    done: dict[str, asyncio.Future[int]] = {
        r["id"]: asyncio.get_running_loop().create_future() for r in reqs
    }
    responses: list[dict[str, Any]] = []
    outer_headers = [(k, v) for k, v in request.scope["headers"] if k in _FORWARDED]

    async def one(r: dict[str, Any]) -> None:
        status = 500
        try:
            deps = [await done[d] for d in r.get("dependsOn") or ()]
            if any(not 200 <= s < 300 for s in deps):
                resp = _fail_dependency(r["id"])
            else:
                async with sem:
                    resp = await _call(app, request, outer_headers, r)
            status = int(resp["status"])
            responses.append(resp)
        finally:
            if not done[r["id"]].done():
                done[r["id"]].set_result(status)

    await asyncio.gather(*(one(r) for r in reqs))
    return dumps({"responses": responses})


async def _call(
    app: ASGIApp, outer: Request, outer_headers: list[tuple[bytes, bytes]], r: dict[str, Any]
) -> dict[str, Any]:
    url = r["url"]
    if url.lower().startswith(("http://", "https://")):
        parts = urlsplit(url)
        url = parts.path + ("?" + parts.query if parts.query else "")
    path, _, query = url.partition("?")
    if not path.startswith("/"):
        path = "/" + path
    if not path.startswith("/v1.0/"):
        path = "/v1.0" + path
    headers = list(outer_headers)
    content = b""
    for k, v in (r.get("headers") or {}).items():
        headers.append((k.lower().encode(), str(v).encode()))
    if r.get("body") is not None:
        b = r["body"]
        content = b.encode() if isinstance(b, str) else dumps(b)
    headers.append((b"content-length", str(len(content)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": r["method"].upper(),
        "scheme": outer.url.scheme,
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": outer.scope.get("client"),
        "server": outer.scope.get("server"),
        "state": {},
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # no disconnect while the handler runs
        sent = True
        return {"type": "http.request", "body": content, "more_body": False}

    status = 500
    resp_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for k, v in message.get("headers", []):
                name = k.decode()
                if name.lower() not in ("content-length", "date", "server"):
                    resp_headers[name] = v.decode()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    raw = b"".join(chunks)
    out: dict[str, Any] = {"id": r["id"], "status": status, "headers": resp_headers}
    if raw:
        ctype = resp_headers.get("content-type", "")
        out["body"] = json.loads(raw) if "json" in ctype else raw.decode(errors="replace")
    return out
