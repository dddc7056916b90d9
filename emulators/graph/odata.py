"""The OData query options Graph documents for contacts (reference 1.4, 1.5, 2).

Only the documented `$filter` forms are understood; anything else is refused with 400 in strict
mode, so product code cannot come to rely on a query the real service may not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request

from .model import canon_prop_id, invalid

_STR = r"'((?:[^']|'')*)'"
_EMAIL_FILTER = re.compile(
    rf"^\s*emailAddresses/any\(\s*(\w+)\s*:\s*\1/address\s+eq\s+{_STR}\s*\)\s*$", re.I
)
_EXT_FILTER = re.compile(
    rf"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+{_STR}\s+and\s+"
    rf"\1/value\s+eq\s+{_STR}\s*\)\s*$",
    re.I,
)
_EXT_EXPAND = re.compile(
    rf"^\s*singleValueExtendedProperties\(\s*\$filter\s*=\s*id\s+eq\s+{_STR}\s*\)\s*$", re.I
)
_MAXPAGESIZE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.I)
_IMMUTABLE = re.compile(r"(?:^|[,;\s])IdType\s*=\s*\"?ImmutableId\"?\s*(?:$|[,;])", re.I)


def _unquote(s: str) -> str:
    return s.replace("''", "'")


@dataclass
class ContactQuery:
    top: int | None = None
    skip: int = 0
    select: list[str] | None = None
    expand_ext: str | None = None  # canonical extended-property id to expand
    email: str | None = None  # lower-cased address from the email filter
    ext_filter: tuple[str, str] | None = None  # (canonical id, lower-cased value)


def parse_contact_query(request: Request, max_top: int, strict: bool) -> ContactQuery:
    q = request.query_params
    out = ContactQuery()
    if "$top" in q:
        try:
            out.top = int(q["$top"])
        except ValueError as exc:
            raise invalid(f"Invalid $top value '{q['$top']}'.") from exc
        if not 1 <= out.top <= max_top:
            raise invalid(f"$top must be between 1 and {max_top}.")
    if "$skip" in q:
        try:
            out.skip = max(0, int(q["$skip"]))
        except ValueError as exc:
            raise invalid(f"Invalid $skip value '{q['$skip']}'.") from exc
    out.select = parse_select(request)
    if "$expand" in q:
        m = _EXT_EXPAND.match(q["$expand"])
        if not m:
            raise invalid(f"Unsupported $expand '{q['$expand']}'.")
        out.expand_ext = canon_prop_id(_unquote(m.group(1)))
    if "$filter" in q:
        text = q["$filter"]
        if m := _EMAIL_FILTER.match(text):
            out.email = _unquote(m.group(2)).strip().lower()
        elif m := _EXT_FILTER.match(text):
            # The property id's Name is case-sensitive, the value is not (reference 1.5).
            out.ext_filter = (canon_prop_id(_unquote(m.group(2))), _unquote(m.group(3)).lower())
        else:
            raise invalid(f"Invalid filter clause: unsupported $filter '{text}'.")
    if strict:
        for opt in ("$orderby", "$search"):
            # Not documented for contacts (reference 1.5): refuse rather than guess.
            if opt in q:
                raise invalid(f"The query option '{opt}' is not supported by the emulator.")
    return out


def parse_select(request: Request) -> list[str] | None:
    raw = request.query_params.get("$select")
    if not raw:
        return None
    return [s.strip() for s in raw.split(",") if s.strip()]


def wants_immutable_ids(request: Request) -> bool:
    """`Prefer: IdType="ImmutableId"` on THIS request ("This header only applies to the request
    it is included with": learn.microsoft.com/graph/outlook-immutable-id). Preferences may
    share one Prefer header, comma-separated (RFC 7240), or come in several."""
    return any(_IMMUTABLE.search(v) for v in request.headers.getlist("prefer"))


def max_page_size(request: Request) -> int | None:
    """`Prefer: odata.maxpagesize=N`, from any Prefer header (values may be comma-joined)."""
    for value in request.headers.getlist("prefer"):
        if m := _MAXPAGESIZE.search(value):
            return int(m.group(1))
    return None
