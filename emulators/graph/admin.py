"""Admin API under `/_emulator` (not counted, not throttled): act as a person, seed, faults,
counters, lifecycle events, snapshots. Each endpoint mirrors a `GraphEmulator` method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contactsync.emulators.common.faults import FaultSpec

from .config import SeedSpec
from .model import GraphError, invalid
from .routes import json_response, read_json

if TYPE_CHECKING:
    from .app import GraphEmulator

_FIRST = (
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Niklaus",
    "Radia",
    "Tim",
)
_LAST = (
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Wirth",
    "Perlman",
    "Berners-Lee",
)


def seed(emu: GraphEmulator, spec: SeedSpec) -> dict[str, Any]:
    """Create `spec.users` mailboxes, each with `contacts_per_user` contacts in `spec.folder`,
    plus duplicates by email and contacts without email. Returns ids for the test to use."""
    state = emu.state
    out: list[dict[str, Any]] = []
    start = len(state.users)
    for i in range(start, start + spec.users):
        user = state.add_user(f"{spec.user_prefix}{i}@{spec.domain}", f"User {i}")
        if spec.folder is None:
            folder = state.folders[user.root_folder_id]
        else:
            existing = [f for f in state.child_folders(user) if f.display_name == spec.folder]
            folder = existing[0] if existing else state.create_folder(user, spec.folder)
        ids = []
        for n in range(spec.contacts_per_user):
            given, last = _FIRST[n % len(_FIRST)], _LAST[(n // len(_FIRST)) % len(_LAST)]
            body = {
                "givenName": given,
                "surname": f"{last} {n}",
                "emailAddresses": [
                    {"name": f"{given} {last}", "address": f"c{n}.u{i}@example.test"}
                ],
                "businessPhones": [f"+1 555 {n:07d}"],
                "companyName": "Contoso",
            }
            ids.append(state.create_contact(user, folder, body).public_id(True))
        for n in range(spec.duplicates_by_email):
            body = {
                "givenName": "Dup",
                "surname": str(n),
                "emailAddresses": [
                    {"address": f"c{n % max(1, spec.contacts_per_user)}.u{i}@example.test"}
                ],
            }
            ids.append(state.create_contact(user, folder, body).public_id(True))
        for n in range(spec.without_email):
            body = {"givenName": "NoMail", "surname": str(n)}
            ids.append(state.create_contact(user, folder, body).public_id(True))
        out.append(
            {
                "id": user.id,
                "userPrincipalName": user.user_principal_name,
                "folderId": folder.id,
                "contactIds": ids,
            }
        )
    return {"users": out}


def _model(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(str(exc)) from exc


def admin_routes(emu: GraphEmulator) -> list[Route]:
    def wrap(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
            except GraphError as err:
                from .app import error_response

                return error_response(err, request)
            if isinstance(result, Response):
                return result
            return json_response(result if result is not None else {"ok": True})

        return endpoint

    async def counters(request: Request) -> Any:
        return emu.counters.snapshot()

    async def reset_counters(request: Request) -> Any:
        emu.counters.reset()

    async def reset(request: Request) -> Any:
        emu.reset()

    async def do_seed(request: Request) -> Any:
        return seed(emu, _model(SeedSpec, await read_json(request)))

    async def add_user(request: Request) -> Any:
        body = await read_json(request)
        return emu.state.add_user(body["userPrincipalName"], body.get("displayName")).to_json()

    async def create_folder(request: Request) -> Any:
        body = await read_json(request)
        user = emu.state.user(request.path_params["u"])
        return emu.state.create_folder(
            user, body.get("displayName"), body.get("parentFolderId")
        ).to_json()

    async def person_create(request: Request) -> Any:
        user = emu.state.user(request.path_params["u"])
        folder = emu.state.folder(user, request.path_params["f"])
        created = emu.state.create_contact(user, folder, await read_json(request))
        return created.view(None, None, immutable=True)

    async def person_list(request: Request) -> Any:
        return {"value": emu.contacts(request.path_params["u"], request.path_params["f"])}

    async def person_update(request: Request) -> Any:
        user = emu.state.user(request.path_params["u"])
        return emu.state.update_contact(
            user, request.path_params["c"], await read_json(request)
        ).view(None, None, immutable=True)

    async def person_delete(request: Request) -> Any:
        emu.state.delete_contact(emu.state.user(request.path_params["u"]), request.path_params["c"])

    async def add_fault(request: Request) -> Any:
        emu.faults.add(_model(FaultSpec, await read_json(request)))

    async def clear_faults(request: Request) -> Any:
        emu.faults.clear()

    async def throttle(request: Request) -> Any:
        body = await read_json(request)
        emu.throttle_storm(str(body.get("user", "*")), float(body.get("seconds", 5)))

    async def notification_faults(request: Request) -> Any:
        body = await read_json(request)
        emu.notifier.drop_next += int(body.get("drop", 0))
        emu.notifier.duplicate_next += int(body.get("duplicate", 0))

    async def notification_stats(request: Request) -> Any:
        return emu.notification_stats()

    async def expire_delta(request: Request) -> Any:
        body = await read_json(request)
        status = body.get("status")
        try:
            expired = emu.delta.expire(
                emu.state.user(body["user"]).id if body.get("user") else None,
                body.get("folderId"),
                int(status) if status is not None else None,
            )
        except ValueError as exc:
            raise invalid(str(exc)) from exc
        return {"expired": expired}

    async def lifecycle(request: Request) -> Any:
        body = await read_json(request)
        return {"sent": emu.subs.lifecycle(request.path_params["sid"], str(body.get("event")))}

    async def subscriptions(request: Request) -> Any:
        return {"value": emu.subscriptions()}

    async def remove_subscription(request: Request) -> Any:
        notify = request.query_params.get("notify", "false").lower() == "true"
        return {"removed": emu.remove_subscription(request.path_params["sid"], notify)}

    async def save(request: Request) -> Any:
        emu.save_snapshot(str((await read_json(request))["path"]))

    async def load(request: Request) -> Any:
        emu.load_snapshot(str((await read_json(request))["path"]))

    p = "/_emulator"
    table: list[tuple[str, Any, str]] = [
        ("/counters", counters, "GET"),
        ("/counters/reset", reset_counters, "POST"),
        ("/reset", reset, "POST"),
        ("/seed", do_seed, "POST"),
        ("/users", add_user, "POST"),
        ("/users/{u}/contactFolders", create_folder, "POST"),
        ("/users/{u}/contactFolders/{f}/contacts", person_create, "POST"),
        ("/users/{u}/contactFolders/{f}/contacts", person_list, "GET"),
        ("/users/{u}/contacts/{c}", person_update, "PATCH"),
        ("/users/{u}/contacts/{c}", person_delete, "DELETE"),
        ("/faults", add_fault, "POST"),
        ("/faults", clear_faults, "DELETE"),
        ("/throttle", throttle, "POST"),
        ("/notifications/faults", notification_faults, "POST"),
        ("/notifications", notification_stats, "GET"),
        ("/delta/expire", expire_delta, "POST"),
        ("/subscriptions", subscriptions, "GET"),
        ("/subscriptions/{sid}/lifecycle", lifecycle, "POST"),
        ("/subscriptions/{sid}", remove_subscription, "DELETE"),
        ("/snapshot/save", save, "POST"),
        ("/snapshot/load", load, "POST"),
    ]
    return [Route(p + path, wrap(fn), methods=[method]) for path, fn, method in table]
