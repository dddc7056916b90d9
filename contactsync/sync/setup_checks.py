"""What `users add|set|enable|validate` check against the services before they change a setup.

- The mailbox is one identity: it resolves to Graph's user id (any case, any alias), and an
  unknown mailbox is refused before anything is stored.
- The filter is shown at work: how many BC contacts it selects now (as a sync would: Persons
  with a name and an email, not privacy-blocked, inside the filter).
- Enabling says what the first sync will do, from a dry-run plan (nothing written).

Setups stopped for sharing another setup's folder are listed by the store itself, without
the services: `store.setups.folder_conflicts()`, each with its `stopped_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import NotFound, Unauthorized
from contactsync.clients.graph import GraphClient
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.links import SyncMode
from contactsync.engine.mapping import BC_SELECT
from contactsync.engine.pair_rules import bc_skip_reason
from contactsync.schemas.setup import UserSetup
from contactsync.sync.full import FULL_LISTING_PAGE
from contactsync.sync.runner import sync_user
from contactsync.sync.services import ConfigError, Services


@dataclass(frozen=True)
class Mailbox:
    """A mailbox as Graph knows it: its user id and the addresses that name it."""

    user_id: str
    aliases: frozenset[str]


async def resolve_mailbox(graph: GraphClient, mailbox: str) -> Mailbox:
    """Graph's user behind `mailbox`; a ConfigError saying what to do if there is none."""
    try:
        user = await graph.get_user(mailbox)
    except NotFound:
        raise ConfigError(
            f"no mailbox {mailbox!r} at Graph: check the address (the user's "
            "userPrincipalName or Graph user id)"
        ) from None
    except Unauthorized as exc:
        if exc.status != 403:
            raise  # credentials refused: the client's own sentence says so
        raise ConfigError(
            f"Graph refused to read the user {mailbox!r} ({exc}): grant the app the "
            "User.Read.All application permission, which checking a mailbox needs"
        ) from None
    names = {mailbox, str(user.get("userPrincipalName") or ""), str(user.get("mail") or "")}
    return Mailbox(str(user["id"]), frozenset(n.lower() for n in names if n))


async def count_selected(bc: BcClient, contact_filter: dict[str, str]) -> int:
    """How many BC contacts a setup with this filter syncs now."""
    parsed = ContactFilter.parse(contact_filter)
    select = sorted({*BC_SELECT, *contact_filter})
    count = 0
    async for page in bc.iter_contact_pages(parsed.to_odata(), page_size=FULL_LISTING_PAGE,
                                            select=select):
        count += sum(1 for contact in page if bc_skip_reason(contact, parsed) is None)
    return count


def selected_sentence(count: int) -> str:
    if count == 0:
        return ("the filter selects no BC contact now: check it (BC filter syntax, e.g. "
                "city=Seattle|Redmond) unless that is what you want")
    return f"the filter selects {count} BC contact{'s' if count != 1 else ''} now"


async def first_sync_preview(setup: UserSetup, services: Services) -> str:
    """What the next Full sync would do, from a dry run (nothing is written)."""
    first = services.store.state.get(setup.user_id).last_sync_at is None
    report = await sync_user(setup, SyncMode.FULL, graph=services.graph, bc=services.bc,
                             store=services.store, dry_run=True)
    s = report.summary
    parts = [f"create {s.created_in_outlook} in Outlook", f"link {s.linked} found on both sides"]
    if s.created_in_bc:
        parts.append(f"create {s.created_in_bc} in BC")
    if s.updated:
        parts.append(f"update {s.updated}")
    if s.deleted_from_outlook:
        parts.append(f"delete {s.deleted_from_outlook} from Outlook")
    skipped = sum(s.skipped.values())
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(s.skipped.items()))
    parts.append(f"skip {skipped}" + (f" ({why})" if why else ""))
    which = "the first sync" if first else "the next full sync"
    sentence = f"{which} will " + ", ".join(parts)
    if report.stop is not None:
        sentence += f"; the mass-delete rail would stop it: {report.stop}"
    return sentence

