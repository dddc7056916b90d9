"""Admin API under `/_emulator` (not counted, not throttled): the same operations as the Python
helpers on `BcEmulator`, for the sandbox, benchmarks and tests in other processes.

    GET    /_emulator/health
    POST   /_emulator/reset
    GET    /_emulator/counters            DELETE /_emulator/counters (reset)
    POST   /_emulator/seed                body: SeedSpec
    GET    /_emulator/contacts[?company=] POST /_emulator/contacts   (act as a person: create)
    PATCH  /_emulator/contacts/{id}       DELETE /_emulator/contacts/{id}   (edit / delete)
    GET    /_emulator/tombstones
    POST   /_emulator/faults              body: FaultSpec        DELETE /_emulator/faults
    POST   /_emulator/throttle            body: {"seconds": 10, "principal": "*"}
    POST   /_emulator/notifications/faults  body: {"drop": 1, "duplicate": 0}
    POST   /_emulator/notifications/flush   send pending notifications now
    GET    /_emulator/notifications       subscriptions, pending work, recent deliveries
    PUT    /_emulator/webhooks            body: {"supported": false}
    POST   /_emulator/snapshot/save       body: {"path": "..."}   POST /_emulator/snapshot/load
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contactsync.emulators.bc.errors import ODataError, error_response
from contactsync.emulators.bc.seed import SeedSpec
from contactsync.emulators.common.faults import FaultSpec

if TYPE_CHECKING:
    from contactsync.emulators.bc.app import BcEmulator


def admin_routes(emu: BcEmulator) -> list[Route]:
    def wrap(fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
            except ODataError as err:
                return err.response()
            except (ValidationError, ValueError, KeyError, OSError) as err:
                return error_response(400, "BadRequest", str(err))
            if isinstance(result, Response):
                return result
            return JSONResponse(result if result is not None else {"ok": True})

        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    def company(request: Request) -> str | None:
        return request.query_params.get("company")

    async def health(_: Request) -> Any:
        return {"ok": True, "service": "bc", "environment": emu.config.environment,
                "companies": [{"id": c.id, "name": c.name}
                              for c in emu.state.companies.values()]}

    async def reset(_: Request) -> Any:
        emu.reset()

    async def counters(_: Request) -> Any:
        return emu.counters_snapshot()

    async def counters_reset(_: Request) -> Any:
        emu.reset_counters()

    async def seed(request: Request) -> Any:
        return emu.seed(SeedSpec.model_validate(await body(request)))

    async def contacts(request: Request) -> Any:
        return {"value": emu.contacts(company(request))}

    async def act_create(request: Request) -> Any:
        return JSONResponse(emu.create_contact(await body(request), company(request)), 201)

    async def act_update(request: Request) -> Any:
        return emu.update_contact(request.path_params["contact_id"], await body(request),
                                  company(request))

    async def act_delete(request: Request) -> Any:
        emu.delete_contact(request.path_params["contact_id"], company(request))
        return Response(status_code=204)

    async def tombstones(request: Request) -> Any:
        return {"value": emu.tombstones(company(request))}

    async def add_fault(request: Request) -> Any:
        emu.inject_fault(FaultSpec.model_validate(await body(request)))
        return {"pending": emu.faults.pending()}

    async def clear_faults(_: Request) -> Any:
        emu.faults.clear()

    async def throttle(request: Request) -> Any:
        data = await body(request)
        emu.throttle_burst(float(data.get("seconds", 10)), str(data.get("principal", "*")))

    async def notification_faults(request: Request) -> Any:
        data = await body(request)
        emu.notification_faults(int(data.get("drop", 0)), int(data.get("duplicate", 0)))

    async def flush(_: Request) -> Any:
        return {"sent": await emu.hub.deliver_due(force=True)}

    async def notifications(_: Request) -> Any:
        return {"subscriptions": [s.entity() for s in emu.hub.all()],
                "pending": emu.hub.pending(), "history": emu.hub.history[-100:]}

    async def webhooks(request: Request) -> Any:
        emu.set_webhooks_supported(bool((await body(request))["supported"]))

    async def snapshot_save(request: Request) -> Any:
        emu.save_snapshot(str((await body(request))["path"]))

    async def snapshot_load(request: Request) -> Any:
        emu.load_snapshot(str((await body(request))["path"]))

    p = "/_emulator"
    return [
        Route(f"{p}/health", wrap(health), methods=["GET"]),
        Route(f"{p}/reset", wrap(reset), methods=["POST"]),
        Route(f"{p}/counters", wrap(counters), methods=["GET"]),
        Route(f"{p}/counters", wrap(counters_reset), methods=["DELETE"]),
        Route(f"{p}/counters/reset", wrap(counters_reset), methods=["POST"]),
        Route(f"{p}/seed", wrap(seed), methods=["POST"]),
        Route(f"{p}/contacts", wrap(contacts), methods=["GET"]),
        Route(f"{p}/contacts", wrap(act_create), methods=["POST"]),
        Route(f"{p}/contacts/{{contact_id}}", wrap(act_update), methods=["PATCH"]),
        Route(f"{p}/contacts/{{contact_id}}", wrap(act_delete), methods=["DELETE"]),
        Route(f"{p}/tombstones", wrap(tombstones), methods=["GET"]),
        Route(f"{p}/faults", wrap(add_fault), methods=["POST"]),
        Route(f"{p}/faults", wrap(clear_faults), methods=["DELETE"]),
        Route(f"{p}/throttle", wrap(throttle), methods=["POST"]),
        Route(f"{p}/notifications/faults", wrap(notification_faults), methods=["POST"]),
        Route(f"{p}/notifications/flush", wrap(flush), methods=["POST"]),
        Route(f"{p}/notifications", wrap(notifications), methods=["GET"]),
        Route(f"{p}/webhooks", wrap(webhooks), methods=["PUT"]),
        Route(f"{p}/snapshot/save", wrap(snapshot_save), methods=["POST"]),
        Route(f"{p}/snapshot/load", wrap(snapshot_load), methods=["POST"]),
    ]
