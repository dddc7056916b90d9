"""The bodies the webhook accepts, as pydantic models (Graph docs: change and lifecycle
notifications; BC webhooks).

Unknown fields are allowed (the services add fields over time); the fields we rely on are typed
and bounded. `parse_*` take the raw bytes and raise `BodyError` with a message naming the field
and never echoing a value (a value may be a clientState).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from contactsync.schemas.messages import LifecycleEvent

MAX_ID = 512
MAX_RESOURCE = 4096
MAX_CLIENT_STATE = 4096  # Graph allows 128, BC 2048: a longer one can only be a mismatch

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Resource = Annotated[str, Field(min_length=1, max_length=MAX_RESOURCE)]
ClientState = Annotated[str | None, Field(default=None, max_length=MAX_CLIENT_STATE)]


class BodyError(ValueError):
    """The body is not what the route accepts; `kind` is invalid_json or invalid_body."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class GraphResourceData(_Open):
    id: Annotated[str, Field(max_length=MAX_ID)] = ""
    etag: Annotated[str, Field(alias="@odata.etag", max_length=MAX_ID)] = ""
    odata_type: Annotated[str, Field(alias="@odata.type", max_length=MAX_ID)] = ""


class GraphChangeItem(_Open):
    """One basic change notification (no resource data)."""

    subscription_id: Id = Field(alias="subscriptionId")
    change_type: Annotated[str, Field(alias="changeType", min_length=1, max_length=64)]
    resource: Resource
    resource_data: GraphResourceData | None = Field(default=None, alias="resourceData")
    client_state: ClientState = Field(default=None, alias="clientState", repr=False)
    tenant_id: Annotated[str | None, Field(alias="tenantId", max_length=MAX_ID)] = None


class GraphLifecycleItem(_Open):
    """One lifecycle notification: missed, subscriptionRemoved, reauthorizationRequired."""

    subscription_id: Id = Field(alias="subscriptionId")
    lifecycle_event: LifecycleEvent = Field(alias="lifecycleEvent")
    client_state: ClientState = Field(default=None, alias="clientState", repr=False)
    tenant_id: Annotated[str | None, Field(alias="tenantId", max_length=MAX_ID)] = None


def _graph_item_kind(value: Any) -> str:
    """Lifecycle items are told apart by `lifecycleEvent`: they may share the notification URL."""
    if isinstance(value, dict):
        return "lifecycle" if "lifecycleEvent" in value else "change"
    return "lifecycle" if isinstance(value, GraphLifecycleItem) else "change"


GraphItem = Annotated[
    Annotated[GraphChangeItem, Tag("change")] | Annotated[GraphLifecycleItem, Tag("lifecycle")],
    Discriminator(_graph_item_kind),
]


class GraphCollection(_Open):
    """`POST /webhooks/graph`: a changeNotificationCollection; lifecycle items are accepted too."""

    value: Annotated[list[GraphItem], Field(min_length=1)]


class GraphLifecycleCollection(_Open):
    """`POST /webhooks/graph/lifecycle`: lifecycle items only."""

    value: Annotated[list[GraphLifecycleItem], Field(min_length=1)]


class BcItem(_Open):
    subscription_id: Id = Field(alias="subscriptionId")
    # created | updated | deleted | collection; other values pass: a hint is a hint
    # (docs/architecture.md 1)
    change_type: Annotated[str, Field(alias="changeType", min_length=1, max_length=64)]
    resource: Resource
    client_state: ClientState = Field(default=None, alias="clientState", repr=False)
    last_modified: datetime | None = Field(default=None, alias="lastModifiedDateTime")


class BcCollection(_Open):
    """`POST /webhooks/bc`: `{"value": [...]}`."""

    value: Annotated[list[BcItem], Field(min_length=1)]


_GRAPH = TypeAdapter(GraphCollection)
_GRAPH_LIFECYCLE = TypeAdapter(GraphLifecycleCollection)
_BC = TypeAdapter(BcCollection)


def _parse(adapter: TypeAdapter[Any], body: bytes) -> Any:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise _body_error(exc) from None


def _body_error(exc: ValidationError) -> BodyError:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return BodyError("invalid_json", f"the body is not valid JSON: {first['msg']}")
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return BodyError("invalid_body", f"{where}: {first['msg']}{more}")


def parse_graph(body: bytes) -> GraphCollection:
    result: GraphCollection = _parse(_GRAPH, body)
    return result


def parse_graph_lifecycle(body: bytes) -> GraphLifecycleCollection:
    result: GraphLifecycleCollection = _parse(_GRAPH_LIFECYCLE, body)
    return result


def parse_bc(body: bytes) -> BcCollection:
    result: BcCollection = _parse(_BC, body)
    return result
