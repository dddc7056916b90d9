"""Graph's `$batch` creates: 20 contacts per request, never one twice.

Graph runs up to 4 inner requests of a batch at once against the mailbox and throttles each
inner request, so a batch holds that many of the mailbox's concurrency slots and charges the
rest to its request window. An item whose create may have landed (5xx, timeout, a whole
`$batch` failed with 424 or 429, a lost answer) is looked up by its BC id before it is tried
again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from kiota_abstractions.method import Method

from contactsync.clients.errors import (
    RetryableError,
    ServiceError,
    ServiceUnavailable,
    server_retry_after,
)
from contactsync.clients.graph.contacts import ContactsApi, with_bc_id
from contactsync.clients.graph.transport import Json, _q, prefer_header
from contactsync.clients.graph_errors import SERVICE, graph_failure
from contactsync.clients.resilience import default_is_ambiguous, retry_delay

BATCH_LIMIT = 20


@dataclass
class CreateResult:
    bc_id: str
    contact: Json | None = None  # the created (or found) contact
    error: ServiceError | None = None
    existed: bool = False  # found by BC id after an ambiguous failure, not created again

    @property
    def ok(self) -> bool:
        return self.error is None and self.contact is not None




class BatchApi(ContactsApi):
    async def create_contacts(
        self, mailbox: str, folder_id: str, contacts: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[CreateResult]:
        """Create contacts given as (bc_id, fields) through `$batch`, 20 per request.

        Returns one result per input, in order. An item whose create may have landed (5xx,
        timeout, a lost batch response) is looked up by its BC id before it is tried again.
        """
        results: list[CreateResult] = [CreateResult(bc_id) for bc_id, _ in contacts]
        for start in range(0, len(contacts), BATCH_LIMIT):
            await self._create_chunk(
                mailbox,
                folder_id,
                contacts,
                results,
                list(range(start, min(start + BATCH_LIMIT, len(contacts)))),
            )
        return results

    async def _create_chunk(
        self,
        mailbox: str,
        folder_id: str,
        contacts: Sequence[tuple[str, Mapping[str, Any]]],
        results: list[CreateResult],
        pending: list[int],
    ) -> None:
        url = f"/users/{_q(mailbox)}/contactFolders/{_q(folder_id)}/contacts"
        headers = {"Content-Type": "application/json"}
        prefer = prefer_header(immutable_ids=self.options.immutable_ids)
        if prefer:  # per inner request: Graph does not carry the batch's own Prefer over
            headers["Prefer"] = prefer
        verify: set[int] = set()
        retry_number = 0
        while pending:
            for i in sorted(verify):  # may have landed: look before creating again
                found = await self.find_by_bc_id(mailbox, folder_id, contacts[i][0])
                if found is not None:
                    results[i].contact, results[i].existed = found, True
                    pending.remove(i)
            if not pending:
                return
            failures: dict[int, RetryableError] = {}
            requests = [
                {
                    "id": str(i),
                    "method": "POST",
                    "url": url,
                    "headers": headers,
                    "body": with_bc_id(contacts[i][1], contacts[i][0]),
                }
                for i in pending
            ]
            whole_batch_failed = False
            try:
                answers = await self._batch(mailbox, requests)
            except RetryableError as err:  # the whole batch: 424, 429, 5xx, lost answer
                failures = dict.fromkeys(pending, err)
                whole_batch_failed = True
            except ServiceError as err:
                for i in pending:
                    results[i].error = err
                return
            else:
                for i in pending:
                    ans = answers.get(str(i))
                    if ans is None:  # never answered: as ambiguous as a 503
                        failures[i] = ServiceUnavailable("no answer in batch", service=SERVICE)
                    elif 200 <= int(ans.get("status", 0)) < 300:
                        results[i].contact = cast(Json, ans.get("body"))
                    else:
                        failure = graph_failure(
                            status=int(ans.get("status", 500)),
                            headers=ans.get("headers") or {},
                            body=ans.get("body"),
                        )
                        if isinstance(failure, RetryableError):
                            failures[i] = failure
                        else:
                            results[i].error = failure
            if not failures:
                return
            # Each failed item may carry its own Retry-After: wait for the longest one.
            worst = max(failures.values(), key=lambda e: server_retry_after(e) or 0.0)
            delay = retry_delay(self.options.policy, retry_number, worst, self._rng.random())
            if delay is None:
                for i, failed in failures.items():
                    results[i].error = failed
                return
            retry_after = server_retry_after(worst)
            if retry_after:
                self._budget.pause(mailbox, float(retry_after))
            await asyncio.sleep(delay)
            retry_number += 1
            pending = sorted(failures)
            # After a whole-batch failure no item says whether it ran: look each up by its BC
            # id before creating it again (never twice).
            verify = {i for i, failed in failures.items()
                      if whole_batch_failed or default_is_ambiguous(failed)}

    async def _batch(self, mailbox: str, requests: list[Json]) -> dict[str, Json]:
        """POST one `$batch` (never retried here: creates are not idempotent). Graph runs up to
        4 inner requests of a batch at once against the mailbox, so the batch holds that many
        of the mailbox's concurrency slots, and every inner request counts against the
        mailbox's request window; batches of one mailbox go one at a time."""
        lock = self._batch_locks.setdefault(mailbox, asyncio.Lock())
        slots = min(len(requests), self.options.limits.max_concurrent)
        async with lock:
            taken = 0
            try:
                for _ in range(slots):
                    await self._budget.acquire(mailbox)
                    taken += 1
                # Graph throttles each inner request: the rest count against the window too.
                await self._budget.charge(mailbox, len(requests) - slots)
                ri = self._request(Method.POST, "/$batch", body={"requests": requests})
                resp = await self._send_once(ri)
            finally:
                for _ in range(taken):
                    self._budget.release(mailbox)
        return {str(r.get("id")): r for r in (resp.body or {}).get("responses") or []}
