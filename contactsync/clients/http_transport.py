"""The Graph and BC clients' connection pool: an `httpx.AsyncBaseTransport` on one
`aiohttp.ClientSession`.

Why: httpx's own pool (httpcore + anyio + h11, all pure Python) cost the applier about 1.4 ms
of CPU per propagated change; aiohttp parses HTTP in C. Measured client side on a loopback
keep-alive server, PATCH with a small JSON body: bare httpx 0.79 ms per request, httpx on this
transport 0.47 ms, bare aiohttp 0.18 ms; `GraphClient.update_contact` 0.96 -> 0.66 ms.
msgraph-sdk (kiota) and the clients' event hooks (telemetry.py) need an `httpx.AsyncClient`, so
httpx stays the interface and only its transport changes (docs/architecture.md, "HTTP").

What stays as it was with httpx's transport:
* TLS trust: `httpx.create_ssl_context()` (certifi, or SSL_CERT_FILE / SSL_CERT_DIR);
* proxies from HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY (read once per origin);
* the per-request timeouts httpx puts in `request.extensions["timeout"]`;
* failures raise the httpx exceptions the clients map (graph_errors.py, bc.py): a request that
  never left raises ConnectError / ConnectTimeout ("not sent", safe to repeat), anything later
  ReadTimeout / ReadError / RemoteProtocolError (ambiguous: a write is repeated only after its
  `find_existing` says it did not land, resilience.py);
* no redirects followed (kiota's RedirectHandler does that), no decompression (httpx decodes
  Content-Encoding when the response is built), cookies left to httpx.

What changes: HTTP/1.1 only (aiohttp has no HTTP/2); Graph and BC serve HTTP/1.1 fully. A
connection the server closed while idle in the pool is retried once by a fresh connection for
GET, HEAD and OPTIONS only (aiohttp's own retry would also repeat a DELETE or PUT blindly).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx
from yarl import URL

# The standard variables the pool reads (README's Settings table has their rows): proxies
# through urllib's getproxies / proxy_bypass (`_proxy`), CAs through httpx's SSL context.
ENVIRONMENT = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE",
               "SSL_CERT_DIR")
# Methods safe to send twice: only these are repeated after a pooled connection turned out
# to be closed. Writes go back to the client, which looks before it repeats (resilience.py).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# An idle connection is dropped before the shortest common server idle timeout (uvicorn's 5 s)
# closes it under us: httpcore looked whether a pooled socket was still open before reusing
# it, aiohttp only knows once the loop has seen the close (a POST would then fail, and be
# looked up before it goes again). httpx kept connections 5 s.
KEEPALIVE_SECONDS = 4.0
# Headers aiohttp would add on its own; httpx has already written the ones the request needs.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_HTTP_11 = b"HTTP/1.1"
# What aiohttp and the OS raise for a failed exchange (TimeoutError is an OSError).
_FAILURES = (aiohttp.ClientError, OSError)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session and returns each response read whole,
    its connection back in the pool before the caller sees it."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._ssl = httpx.create_ssl_context()  # read now, as httpx reads it at client creation
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        """The session, made on the running loop at the first request (a client may be built
        before any loop runs)."""
        session = self._session
        loop = asyncio.get_running_loop()
        if session is None or session.closed or loop is not self._loop:
            # A session belongs to its loop; a client used on another one gets a fresh session.
            self._loop = loop
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ssl=self._ssl,
                keepalive_timeout=KEEPALIVE_SECONDS,
            )
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=_SKIP_AUTO_HEADERS,
                # trust_env would look the proxy and ~/.netrc up in a thread for every
                # request; proxies are resolved here once per origin instead (`_proxy`).
                trust_env=False,
            )
            # aiohttp repeats any idempotent method (DELETE, PUT too) on a dropped connection;
            # we repeat only SAFE_METHODS (`handle_async_request`). A private switch: the
            # session takes no argument for it (aiohttp pinned in deploy/requirements.lock).
            session._retry_connection = False
            self._session = session
        return session

    def _proxy(self, url: httpx.URL) -> str | None:
        """The proxy for `url` from the environment, as httpx read it: the scheme's
        `<scheme>_proxy`, else `all_proxy`, unless `no_proxy` names the host."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            env = urllib.request.getproxies()
            proxy = env.get(url.scheme) or env.get("all")
            if proxy and urllib.request.proxy_bypass(url.host):
                proxy = None
            if proxy and "://" not in proxy:
                proxy = "http://" + proxy
            self._proxies[key] = proxy or None
        return self._proxies[key]

    def _timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """httpx's per-request timeouts in aiohttp's terms: the pool wait and the connect
        together bound getting a connection, `read` every wait for the server's bytes.
        aiohttp has no write timeout (our bodies are small)."""
        pool, connect, read = timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read")
        key = (pool, connect, read)
        cached = self._timeouts.get(key)
        if cached is None:
            acquire = None if pool is None or connect is None else pool + connect
            cached = aiohttp.ClientTimeout(total=None, connect=acquire, sock_connect=connect,
                                           sock_read=read)
            self._timeouts[key] = cached
        return cached

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open_session()
        body = await request.aread()
        method = request.method
        encoding = request.headers.encoding
        kwargs: dict[str, Any] = {
            # Names as written (multi_items() would lower-case them), decoded as httpx encoded.
            "headers": [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw],
            "data": body or None,
            "allow_redirects": False,
            "timeout": self._timeout(request.extensions.get("timeout", {})),
            "proxy": self._proxy(request.url),
        }
        url = URL(str(request.url), encoded=True)  # httpx has quoted it: send it verbatim
        retry_stale = method in SAFE_METHODS
        while True:
            try:
                async with session.request(method, url, **kwargs) as resp:
                    try:
                        content = await resp.read()
                    except _FAILURES as exc:  # the answer began: ambiguous, never repeated here
                        raise _as_httpx(exc, request) from exc
                    return httpx.Response(
                        resp.status, headers=resp.raw_headers, content=content,
                        request=request,
                        extensions={"http_version": _HTTP_11,
                                    "reason_phrase": (resp.reason or "").encode()},
                    )
            except httpx.HTTPError:
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Closed before an answer began, most often a pooled connection the server had
                # just closed (its idle timeout): a safe request goes once more, as aiohttp's
                # own retry would send it.
                if retry_stale and not isinstance(exc, aiohttp.ClientConnectorError):
                    retry_stale = False
                    continue
                raise _as_httpx(exc, request) from exc
            except _FAILURES as exc:
                raise _as_httpx(exc, request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _as_httpx(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception httpx's own transport raises for the same failure."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout  # connecting, or waiting for the pool: never sent
    elif isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        kind = httpx.ProxyError  # the proxy refused the tunnel
    elif isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientSSLError):
        kind = httpx.ConnectError  # refused, unresolvable, untrusted certificate: never sent
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                    | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError  # closed mid-answer, or an answer that is not HTTP
    elif isinstance(exc, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    else:
        kind = httpx.ReadError  # reset or broken pipe while sending or reading
    return kind(message, request=request)
