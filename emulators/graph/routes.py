"""The `/v1.0` service endpoints: users, contact folders, contacts, delta, subscriptions.

Handlers are plain async functions over `GraphEmulator`; `app.py` wraps each in the guard that
applies injected faults and the per-mailbox throttle and renders `GraphError`s.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from .batch import run_batch
from .model import Contact, Folder, GraphError, User, dumps, invalid
from .odata import max_page_size, parse_contact_query, parse_select, wants_immutable_ids

if TYPE_CHECKING:
    from .app import GraphEmulator

JSON_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
    "charset=utf-8"
)
Handler = Callable[[Request], Awaitable[Response]]


def base_of(request: Request) -> str:
    """Public base URL as the client sees it (Host header), so links work on any port."""
    return f"{request.url.scheme}://{request.url.netloc}"


def json_response(
    body: bytes | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    raw = body if isinstance(body, bytes) else dumps(body)
    return Response(raw, status_code=status, media_type=JSON_TYPE, headers=headers)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise invalid("Unable to read JSON request payload.", "BadRequest") from exc


def _page_links(request: Request, skip: int, size: int, total: int) -> bytes:
    if skip + size >= total:
        return b""
    params = dict(request.query_params)
    params["$skip"] = str(skip + size)
    url = f"{base_of(request)}{request.url.path}?" + urlencode(
        params, quote_via=quote, safe="$'(),:/=@"
    )
    return b',"@odata.nextLink":' + dumps(url)


def collection(context: str, items: Sequence[bytes], tail: bytes = b"") -> bytes:
    return (
        b'{"@odata.context":'
        + dumps(context)
        + b',"value":['
        + b",".join(items)
        + b"]"
        + tail
        + b"}"
    )


class ServiceRoutes:
    def __init__(self, emu: GraphEmulator) -> None:
        self.emu = emu
        self.state = emu.state
        self.config = emu.config

    # ---- helpers -----------------------------------------------------------------------------
    def _user(self, request: Request) -> User:
        return self.state.user(request.path_params["u"])

    def _folder(self, request: Request, user: User) -> Folder:
        fid = request.path_params.get("f")
        return self.state.folder(user, fid) if fid else self.state.folders[user.root_folder_id]

    def _page_size(self, request: Request, top: int | None) -> int:
        if top is not None:
            return top
        pref = max_page_size(request)
        if pref:
            return max(1, min(pref, self.config.max_top))
        return self.config.default_page_size

    def _contact_response(
        self, request: Request, user: User, c: Contact, status: int = 200
    ) -> Response:
        q = parse_contact_query(request, self.config.max_top, self.config.strict)
        ctx = f"{base_of(request)}/v1.0/$metadata#users('{quote(user.id)}')/contacts/$entity"
        immutable = wants_immutable_ids(request)
        body = c.view(q.select, q.expand_ext, immutable) if (q.select or q.expand_ext) else None
        raw = dumps(body) if body is not None else c.raw(immutable)
        return json_response(
            b'{"@odata.context":' + dumps(ctx) + b"," + raw[1:], status, {"ETag": c.etag}
        )

    # ---- users -------------------------------------------------------------------------------
    async def list_users(self, request: Request) -> Response:
        ctx = f"{base_of(request)}/v1.0/$metadata#users"
        return json_response(
            {"@odata.context": ctx, "value": [u.to_json() for u in self.state.users.values()]}
        )

    async def get_user(self, request: Request) -> Response:
        user = self._user(request)
        ctx = f"{base_of(request)}/v1.0/$metadata#users/$entity"
        return json_response({"@odata.context": ctx, **user.to_json()})

    # ---- folders -----------------------------------------------------------------------------
    async def list_folders(self, request: Request) -> Response:
        user = self._user(request)
        parent = request.path_params.get("f")
        if parent:
            parent = self.state.folder(user, parent).id
        if self.config.strict and "$filter" in request.query_params:
            raise invalid("$filter on contactFolders is not supported by the emulator.")
        folders = self.state.child_folders(user, parent)
        q = parse_contact_query(request, self.config.max_top, strict=False)
        size = self._page_size(request, q.top)
        page = folders[q.skip : q.skip + size]
        ctx = f"{base_of(request)}/v1.0/$metadata#users('{quote(user.id)}')/contactFolders"
        return json_response(
            collection(
                ctx,
                [dumps(f.to_json()) for f in page],
                _page_links(request, q.skip, size, len(folders)),
            )
        )

    async def create_folder(self, request: Request) -> Response:
        user = self._user(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", "BadRequest")
        parent = request.path_params.get("f") or body.get("parentFolderId")
        folder = self.state.create_folder(user, body.get("displayName"), parent)
        ctx = f"{base_of(request)}/v1.0/$metadata#users('{quote(user.id)}')/contactFolders/$entity"
        return json_response({"@odata.context": ctx, **folder.to_json()}, 201)

    async def get_folder(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user)
        ctx = f"{base_of(request)}/v1.0/$metadata#users('{quote(user.id)}')/contactFolders/$entity"
        return json_response({"@odata.context": ctx, **folder.to_json()})

    async def update_folder(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user)
        body = await read_json(request)
        name = body.get("displayName") if isinstance(body, dict) else None
        if isinstance(name, str) and name.strip():
            folder.display_name = name
        return await self.get_folder(request)

    async def delete_folder(self, request: Request) -> Response:
        user = self._user(request)
        self.state.delete_folder(user, self._folder(request, user).id)
        return Response(status_code=204)

    # ---- contacts ----------------------------------------------------------------------------
    async def list_contacts(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user)
        q = parse_contact_query(request, self.config.max_top, self.config.strict)
        ids: Sequence[str]
        if q.email is not None:
            ids = sorted(folder.by_email.get(q.email, ()))
        elif q.ext_filter is not None:
            ids = sorted(folder.by_ext.get(q.ext_filter, ()))
        else:
            ids = folder.order()
        size = self._page_size(request, q.top)
        contacts = self.state.contacts
        page = [contacts[cid] for cid in ids[q.skip : q.skip + size]]
        immutable = wants_immutable_ids(request)
        if q.select or q.expand_ext:
            items = [dumps(c.view(q.select, q.expand_ext, immutable)) for c in page]
        else:
            items = [c.raw(immutable) for c in page]
        ctx = (
            f"{base_of(request)}/v1.0/$metadata#users('{quote(user.id)}')/contactFolders"
            f"('{quote(folder.id)}')/contacts"
        )
        return json_response(collection(ctx, items, _page_links(request, q.skip, size, len(ids))))

    async def create_contact(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user)
        c = self.state.create_contact(user, folder, await read_json(request))
        return self._contact_response(request, user, c, 201)

    async def get_contact(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user) if "f" in request.path_params else None
        return self._contact_response(
            request, user, self.state.contact(user, request.path_params["c"], folder)
        )

    async def update_contact(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user) if "f" in request.path_params else None
        c = self.state.update_contact(
            user,
            request.path_params["c"],
            await read_json(request),
            request.headers.get("if-match"),
            folder,
        )
        return self._contact_response(request, user, c)

    async def delete_contact(self, request: Request) -> Response:
        user = self._user(request)
        folder = self._folder(request, user) if "f" in request.path_params else None
        self.state.delete_contact(
            user, request.path_params["c"], request.headers.get("if-match"), folder
        )
        return Response(status_code=204)

    async def delta(self, request: Request) -> Response:
        user = self._user(request)
        folder_id = request.path_params["f"]
        q = request.query_params
        skiptoken, deltatoken = q.get("$skiptoken"), q.get("$deltatoken")
        if skiptoken is None and deltatoken is None:
            folder_id = self.state.folder(user, folder_id).id  # 404 for an unknown folder
        pref = max_page_size(request)
        size = min(pref, self.config.delta_max_page_size) if pref else None
        body = self.emu.delta.page(
            user_id=user.id,
            folder_id=folder_id,
            link_base=f"{base_of(request)}{request.url.path}",
            context=f"{base_of(request)}/v1.0/$metadata#Collection(contact)",
            skiptoken=skiptoken,
            deltatoken=deltatoken,
            select=parse_select(request),
            page_size=max(1, size) if size else None,
            default_page_size=self.config.delta_default_page_size,
            # Per request, next and delta links included: the links work with either form
            # (learn.microsoft.com/graph/outlook-immutable-id, "Immutable ID with delta query").
            immutable=wants_immutable_ids(request),
        )
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if pref else None
        return json_response(body, headers=headers)

    # ---- subscriptions -----------------------------------------------------------------------
    async def create_subscription(self, request: Request) -> Response:
        # Notifications carry the id form asked for when the subscription was created
        # (learn.microsoft.com/graph/outlook-immutable-id, "Immutable ID with change
        # notifications").
        sub = await self.emu.subs.create(await read_json(request), wants_immutable_ids(request))
        return json_response(sub.to_json(base_of(request)), 201)

    async def list_subscriptions(self, request: Request) -> Response:
        base = base_of(request)
        items = []
        for sub in self.emu.subs.list_for():
            item = sub.to_json(base)
            del item["@odata.context"]
            items.append(item)
        return json_response(
            {"@odata.context": f"{base}/v1.0/$metadata#subscriptions", "value": items}
        )

    async def get_subscription(self, request: Request) -> Response:
        return json_response(
            self.emu.subs.get(request.path_params["sid"]).to_json(base_of(request))
        )

    async def renew_subscription(self, request: Request) -> Response:
        sub = self.emu.subs.renew(request.path_params["sid"], await read_json(request))
        return json_response(sub.to_json(base_of(request)))

    async def delete_subscription(self, request: Request) -> Response:
        self.emu.subs.get(request.path_params["sid"])
        self.emu.subs.remove(request.path_params["sid"])
        return Response(status_code=204)

    async def reauthorize_subscription(self, request: Request) -> Response:
        self.emu.subs.get(request.path_params["sid"])
        return Response(status_code=204)

    async def batch(self, request: Request) -> Response:
        return json_response(await run_batch(self.emu.asgi, request, self.config))

    async def me(self, request: Request) -> Response:
        raise GraphError(
            400, "BadRequest", "/me request is only valid with delegated authentication flow."
        )
