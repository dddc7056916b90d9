"""Builds what a sync needs from settings: the Graph and BC clients and the store.

ONE Azure credential (`contactsync.credentials`, kind chosen by CONTACTSYNC_AZURE_CREDENTIAL)
serves both clients. Without one the clients accept only loopback URLs: the emulators.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.credentials import SharedCredential, build_credential
from contactsync.settings import ConfigError as ConfigError  # its old home, for importers
from contactsync.settings import Settings
from contactsync.store import Store


@dataclass
class Services:
    graph: GraphClient
    bc: BcClient
    store: Store


def open_store(settings: Settings) -> Store:
    return Store.open(settings.database_url)


def azure_credential(settings: Settings) -> SharedCredential | None:
    """The credential the settings ask for (None for emulators that take no token)."""
    return build_credential(settings)


_GRAPH_VERSIONS = ("/v1.0", "/beta")
_BC_API = "/api/v2.0"


def check_base_urls(settings: Settings) -> None:
    """The base URLs' shape, before any request: a Graph URL without its version answers 404
    for every mailbox, which would read as "no such mailbox"."""
    graph = urlsplit(settings.graph_base_url)
    if graph.scheme not in ("http", "https") or not graph.netloc:
        raise ConfigError(f"CONTACTSYNC_GRAPH_BASE_URL {settings.graph_base_url!r} is not a "
                          "URL: use https://graph.microsoft.com/v1.0")
    if not graph.path.rstrip("/").endswith(_GRAPH_VERSIONS):
        raise ConfigError(f"CONTACTSYNC_GRAPH_BASE_URL {settings.graph_base_url} lacks the API "
                          "version: end it with /v1.0 (https://graph.microsoft.com/v1.0)")
    bc = urlsplit(settings.bc_base_url)
    if bc.scheme not in ("http", "https") or not bc.netloc:
        raise ConfigError(f"CONTACTSYNC_BC_BASE_URL {settings.bc_base_url!r} is not a URL: use "
                          "https://api.businesscentral.dynamics.com/v2.0/TENANT/ENVIRONMENT"
                          "/api/v2.0")
    if not bc.path.rstrip("/").endswith(_BC_API):
        raise ConfigError(f"CONTACTSYNC_BC_BASE_URL {settings.bc_base_url} does not end with "
                          f"{_BC_API}: use https://api.businesscentral.dynamics.com/v2.0/"
                          "TENANT/ENVIRONMENT/api/v2.0")


@asynccontextmanager
async def open_services(settings: Settings, store: Store | None = None) -> AsyncIterator[Services]:
    missing = settings.missing_tenant()
    if missing:
        raise ConfigError(
            f"no tenant configured: set {', '.join(missing)} "
            "(or run `contactsync emulate` and use the URLs it prints)"
        )
    check_base_urls(settings)
    credential = azure_credential(settings)
    own_store = store is None
    store = store or open_store(settings)
    graph = GraphClient.create(settings.graph_base_url, credential, scopes=(settings.graph_scope,),
                               timeout=settings.http_timeout)
    try:
        bc = await BcClient.create(settings.bc_base_url, settings.bc_company, credential,
                                   scope=settings.bc_scope, timeout=settings.http_timeout)
        try:
            yield Services(graph, bc, store)
        finally:
            await bc.aclose()
    finally:
        await graph.close()
        if credential is not None:
            await credential.close()
        if own_store:
            store.close()
