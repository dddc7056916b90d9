"""The Graph and BC clients' connection pool (clients/http_transport.py: httpx on aiohttp) as a
user meets it: broken connections, TLS trust, compressed answers, proxies, slow answers. Real
emulators on real sockets, the product's real clients; the network's failures come from a relay
in between (forwarding_proxy.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import typer
from starlette.middleware.gzip import GZipMiddleware

from contactsync.cli.common import user_errors
from contactsync.clients.bc import BcClient
from contactsync.clients.errors import ServiceUnavailable
from contactsync.clients.graph import GraphClient
from contactsync.clients.resilience import RetryPolicy
from contactsync.emulators.bc import BcEmulator, BcEmulatorConfig
from contactsync.emulators.entra.tls import LocalCertificate, local_certificate
from contactsync.emulators.graph import GraphEmulator, GraphEmulatorConfig
from contactsync.http_server import BackgroundServer
from tests.clients.forwarding_proxy import Breakage, ForwardingProxy
from tests.emulators.graph_fixtures import GraphEnv, fast_options, graph_fixture  # noqa: F401

MAILBOX = "pool@contoso.test"
PERSON = {"givenName": "Ada", "surname": "Lovelace", "displayName": "Ada Lovelace"}


@pytest.fixture(autouse=True)
def nothing_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests decide which proxy and which CAs the clients see, whatever the machine's
    environment says."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture(name="relay")
async def relay_fixture(graph: GraphEnv) -> AsyncIterator[ForwardingProxy]:
    async with ForwardingProxy(int(graph.url.rsplit(":", 1)[1])) as proxy:
        yield proxy


@pytest.fixture(name="relayed_client")
async def relayed_client_fixture(relay: ForwardingProxy) -> AsyncIterator[GraphClient]:
    """A GraphClient whose base URL is the relay (it passes everything on to the emulator)."""
    async with GraphClient.create(relay.url + "/v1.0", options=fast_options()) as client:
        yield client


@pytest.fixture(name="certificate")
def certificate_fixture(tmp_path: Path) -> LocalCertificate:
    return local_certificate(tmp_path / "tls")


@pytest.fixture(name="tls_graph")
def tls_graph_fixture(certificate: LocalCertificate) -> Iterator[GraphEnv]:
    """The Graph emulator served over https with a certificate no public CA signed."""
    emu = GraphEmulator(GraphEmulatorConfig.fast())
    server = BackgroundServer(
        emu.app, tls=(str(certificate.cert_path), str(certificate.key_path))).start()
    try:
        yield GraphEnv(emu, server.url)
    finally:
        server.stop()


def _requests(relay: ForwardingProxy, method: str, path_part: str) -> list[str]:
    """Each relayed request's answer status ("" when the relay closed without answering)."""
    return [r.response_head.split(" ", 2)[1] if r.response_head else ""
            for r in relay.relayed if r.request_line.startswith(f"{method} ")
            and path_part in r.request_line]


def _contacts(folder: str) -> str:
    return f"/contactFolders/{quote(folder, safe='')}/contacts"


def _contact(contact: dict[str, object]) -> str:
    return f"/contacts/{quote(str(contact['id']), safe='')}"


def _sentence(error: Exception, capsys: pytest.CaptureFixture[str]) -> str:
    """What a command that met `error` prints (the CLI's `user_errors`), without the retry
    lines before it (a CLI command run earlier in this process prints them on stderr)."""
    capsys.readouterr()
    with pytest.raises(typer.Exit), user_errors():
        raise error
    return capsys.readouterr().err.strip()


def _retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "contactsync.retries"]


async def test_a_read_cut_off_midway_is_asked_again(
    graph: GraphEnv, relay: ForwardingProxy, relayed_client: GraphClient
) -> None:
    uid = graph.emu.add_user(MAILBOX)["id"]
    folder = await relayed_client.find_or_create_folder(uid)
    created = await relayed_client.create_contact(uid, folder, "BC-1", PERSON)
    relay.breakages.append(Breakage("GET", _contact(created), "cut_answer"))

    got = await relayed_client.get_contact(uid, str(created["id"]))

    assert got["displayName"] == "Ada Lovelace"
    assert _requests(relay, "GET", _contact(created)) == ["200", "200"]


async def test_a_create_cut_off_midway_is_looked_up_not_sent_again(
    graph: GraphEnv, relay: ForwardingProxy, relayed_client: GraphClient
) -> None:
    uid = graph.emu.add_user(MAILBOX)["id"]
    folder = await relayed_client.find_or_create_folder(uid)
    relay.breakages.append(Breakage("POST", _contacts(folder), "cut_answer"))

    created = await relayed_client.create_contact(uid, folder, "BC-1", PERSON)

    assert created["displayName"] == "Ada Lovelace"
    assert _requests(relay, "POST", _contacts(folder)) == ["201"]
    assert len(graph.emu.contacts(uid, folder)) == 1


async def test_a_kept_alive_connection_the_server_closed_is_not_an_error(
    graph: GraphEnv, relay: ForwardingProxy, relayed_client: GraphClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server may close an idle kept-alive connection just as the next request goes out on
    it. A read is then sent again on a fresh connection, unnoticed; a create is not repeated
    blindly: the client looks whether it landed first, so the contact is created once."""
    caplog.set_level(logging.INFO, logger="contactsync.retries")
    uid = graph.emu.add_user(MAILBOX)["id"]
    folder = await relayed_client.find_or_create_folder(uid)
    created = await relayed_client.create_contact(uid, folder, "BC-1", PERSON)
    contact = _contact(created)
    relay.breakages.append(Breakage("GET", contact, "close_unanswered"))

    assert (await relayed_client.get_contact(uid, str(created["id"])))["id"] == created["id"]
    assert _requests(relay, "GET", contact) == ["", "200"]
    assert _retry_lines(caplog) == []  # the user saw nothing

    relay.breakages.append(Breakage("POST", _contacts(folder), "close_unanswered"))
    await relayed_client.create_contact(uid, folder, "BC-2", PERSON)
    # The unanswered POST never reached Graph: the client looked (a GET), then sent it once more.
    assert _requests(relay, "POST", _contacts(folder)) == ["201", "", "201"]
    assert len(graph.emu.contacts(uid, folder)) == 2
    assert len(_retry_lines(caplog)) == 1


async def test_an_untrusted_certificate_is_refused_in_one_sentence(
    tls_graph: GraphEnv, certificate: LocalCertificate, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CONTACTSYNC_GRAPH_BASE_URL", tls_graph.api)
    uid = tls_graph.emu.add_user(MAILBOX)["id"]
    async with GraphClient.create(tls_graph.api, options=fast_options()) as untrusting:
        with pytest.raises(ServiceUnavailable) as refused:
            await untrusting.list_folders(uid)
    assert refused.value.code == "NotSent"  # nothing was sent: safe to repeat any call

    assert _sentence(refused.value, capsys) == (
        f"error: Graph is not reachable at {tls_graph.api} (ConnectError): check "
        "CONTACTSYNC_GRAPH_BASE_URL and that the service is up")

    # Trusted the way httpx trusted a private CA: SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert_path))
    async with GraphClient.create(tls_graph.api, options=fast_options()) as trusting:
        assert await trusting.list_folders(uid) == []


async def test_an_untrusted_certificate_at_bc_is_refused_in_one_sentence(
    certificate: LocalCertificate, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = BcEmulator(BcEmulatorConfig.for_tests())
    with BackgroundServer(emu.app, tls=(str(certificate.cert_path),
                                        str(certificate.key_path))) as server:
        api = f"{server.url}/v2.0/{emu.config.environment}/api/v2.0"
        monkeypatch.setenv("CONTACTSYNC_BC_BASE_URL", api)
        with pytest.raises(ServiceUnavailable) as refused:
            await BcClient.create(api, emu.company_id, policy=RetryPolicy.fast())
        assert _sentence(refused.value, capsys) == (
            f"error: Business Central is not reachable at {api} (ConnectError talking to "
            "Business Central): check CONTACTSYNC_BC_BASE_URL and that the service is up")

        monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert_path))
        async with await BcClient.create(api, emu.company_id) as trusting:
            assert await trusting.list_contacts() == []


async def test_compressed_answers_are_read() -> None:
    emu = GraphEmulator(GraphEmulatorConfig.fast())
    uid = emu.add_user(MAILBOX)["id"]
    with BackgroundServer(GZipMiddleware(emu.app, minimum_size=1)) as server:
        async with (ForwardingProxy(server.port) as relay,
                    GraphClient.create(relay.url + "/v1.0", options=fast_options()) as client):
            folder = await client.find_or_create_folder(uid)
            await client.create_contact(uid, folder, "BC-1", PERSON)
            listed = await client.list_contacts(uid, folder)
    assert [c["displayName"] for c in listed] == ["Ada Lovelace"]
    heads = [r.response_head.lower() for r in relay.relayed
             if r.request_line.startswith("GET ") and "/contacts" in r.request_line]
    assert heads and all("content-encoding: gzip" in h for h in heads)


async def test_https_proxy_from_the_environment_carries_graph(
    tls_graph: GraphEnv, certificate: LocalCertificate, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert_path))
    uid = tls_graph.emu.add_user(MAILBOX)["id"]
    port = int(tls_graph.url.rsplit(":", 1)[1])
    async with ForwardingProxy(port) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with GraphClient.create(tls_graph.api, options=fast_options()) as client:
            assert await client.list_folders(uid) == []
    assert [r.request_line for r in proxy.relayed] == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]


async def test_http_proxy_from_the_environment_carries_bc(monkeypatch: pytest.MonkeyPatch) -> None:
    emu = BcEmulator(BcEmulatorConfig.for_tests())
    with BackgroundServer(emu.app) as server:
        api = f"{server.url}/v2.0/{emu.config.environment}/api/v2.0"
        async with ForwardingProxy(server.port) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            async with await BcClient.create(api, emu.company_id) as client:
                await client.list_contacts()
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            async with await BcClient.create(api, emu.company_id) as direct:
                await direct.list_contacts()
    lines = [r.request_line for r in proxy.relayed]
    assert lines and all(line.split(" ")[1].startswith(server.url + "/") for line in lines)
    assert len(lines) == 2  # the companies, then the contacts; NO_PROXY's client went direct


async def test_a_slow_answer_is_given_up_and_asked_again(graph: GraphEnv) -> None:
    uid = graph.emu.add_user(MAILBOX)["id"]
    graph.emu.add_fault(kind="latency", seconds=2.0, count=1, route="/contactFolders")
    async with GraphClient.create(graph.api, options=fast_options(), timeout=0.5) as client:
        assert await client.list_folders(uid) == []
