"""Microsoft Graph client for Outlook contacts and change-notification subscriptions.

One class for callers, `GraphClient`, made of one part per job:
- `transport`: the connection pool, authentication, budgets and retries, one request, paging;
- `contacts`: users, contact folders and contacts (read, find by BC id or email, write one);
- `batch`: `$batch` creates (never one twice) and updates;
- `delta`: the delta query over a folder;
- `subscriptions`: change-notification subscriptions.

Data in and out is plain dicts in Graph's wire shape; errors are `contactsync.clients.errors`.
"""

from __future__ import annotations

from contactsync.clients.graph.batch import (
    BATCH_LIMIT,
    BatchApi,
    BatchResult,
    ContactUpdate,
    CreateResult,
    UpdateResult,
)
from contactsync.clients.graph.contacts import ContactsApi, bc_id_of, with_bc_id
from contactsync.clients.graph.delta import DeltaApi, DeltaResult
from contactsync.clients.graph.subscriptions import SubscriptionsApi, new_client_state
from contactsync.clients.graph.transport import (
    DEFAULT_BASE_URL,
    GRAPH_SCOPE,
    LOOPBACK_HOSTS,
    SUBSCRIPTION_LIMITS,
    GraphClientOptions,
    is_loopback,
    prefer_header,
)
from contactsync.engine.mapping import BC_ID_PROPERTY

__all__ = [
    "BATCH_LIMIT", "BC_ID_PROPERTY", "DEFAULT_BASE_URL", "GRAPH_SCOPE", "LOOPBACK_HOSTS",
    "SUBSCRIPTION_LIMITS", "BatchResult", "ContactUpdate", "ContactsApi", "CreateResult",
    "DeltaResult", "GraphClient", "GraphClientOptions", "UpdateResult", "bc_id_of",
    "is_loopback", "new_client_state", "prefer_header", "with_bc_id",
]


class GraphClient(BatchApi, DeltaApi, SubscriptionsApi):
    """One per process (it holds the connection pool and the per-mailbox budgets)."""
