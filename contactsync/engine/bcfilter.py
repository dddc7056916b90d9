"""Business Central's filter syntax, per contact field: parse, evaluate, translate to OData.

A user's filter is a dict {BC API property: expression}; a contact must match every field.
Syntax (Microsoft Learn, "Entering Criteria in Filters"):

    Seattle          equal                 <>''        not empty
    Seattle|Redmond  or                    ''          empty
    >=A&<=C          and (binds tighter)   98000..98999, ..B, A..   ranges (inclusive)
    <> < > <= >= =   comparisons           *co*  Jo?n  wildcards (any run / one character)
    @contoso*        case-insensitive      'Smith & Co' 'O''Brien'   quoted literal, '' escape
    30|(>=10&<=20)   parentheses

Comparison is text comparison, case-sensitive unless `@`, as BC does for Text fields.

UNCONFIRMED choices (BC's docs do not say):
- `&` binds tighter than `|`.
- Spaces around an unquoted value are ignored (`Seattle | Redmond`); inside a value they count.
- Inside quotes `*` and `?` are literal; a wildcard cannot be combined with `<`, `>`, `<=`,
  `>=` or a range; `<>` with a wildcard means "does not match".
- Code fields (postalCode, country, number, companyNumber) upper-case the filter value, as BC
  stores Code values in upper case. `type` compares its option names case-insensitively.
- An empty expression is refused, though SetFilter(field, '') would clear the field's filter:
  a `city=` typed by mistake must not sync a mailbox with every contact. `''` means empty.
- A range has exactly two dots: `98000...98999` is refused, not read as 98000..'.98999'.
- Date fields are not filterable here.

`ContactFilter.to_odata()` gives an exact `$filter` or None; the server's collation may still
be case-insensitive, so callers that list with it evaluate `matches()` locally as well (cheap).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final


class FieldKind(Enum):
    TEXT = "text"
    CODE = "code"
    OPTION = "option"
    BOOL = "bool"


FILTERABLE_FIELDS: Final[Mapping[str, FieldKind]] = {
    "number": FieldKind.CODE,
    "type": FieldKind.OPTION,
    "displayName": FieldKind.TEXT,
    "jobTitle": FieldKind.TEXT,
    "companyNumber": FieldKind.CODE,
    "companyName": FieldKind.TEXT,
    "contactBusinessRelation": FieldKind.OPTION,
    "addressLine1": FieldKind.TEXT,
    "addressLine2": FieldKind.TEXT,
    "city": FieldKind.TEXT,
    "state": FieldKind.TEXT,
    "country": FieldKind.CODE,
    "postalCode": FieldKind.CODE,
    "phoneNumber": FieldKind.TEXT,
    "mobilePhoneNumber": FieldKind.TEXT,
    "email": FieldKind.TEXT,
    "website": FieldKind.TEXT,
    "searchName": FieldKind.CODE,
    "privacyBlocked": FieldKind.BOOL,
    "taxRegistrationNumber": FieldKind.TEXT,
}
_OPTION_NAMES: Final = {"type": ("Person", "Company")}
_TRUE: Final = frozenset({"true", "yes", "1"})
_FALSE: Final = frozenset({"false", "no", "0"})
_ODATA_OPS: Final = {"=": "eq", "<>": "ne", "<": "lt", ">": "gt", "<=": "le", ">=": "ge"}
_SPECIAL: Final = "|&()"


class FilterError(ValueError):
    """A user's filter cannot be used."""


class UnknownFilterField(FilterError):
    def __init__(self, field: str) -> None:
        self.field = field
        valid = ", ".join(sorted(FILTERABLE_FIELDS))
        super().__init__(f"Unknown filter field {field!r}. Valid fields: {valid}")


class FilterSyntaxError(FilterError):
    """A syntax error; `position` is the 0-based index of the offending character."""

    def __init__(self, field: str, expression: str, position: int, reason: str) -> None:
        self.field = field
        self.expression = expression
        self.position = position
        self.reason = reason
        super().__init__(
            f"Invalid filter for {field!r} at character {position + 1}: {reason}\n"
            f"  {expression}\n  {' ' * position}^"
        )


# ---- syntax tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # one of = <> < > <= >=
    value: str
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str  # with * and ? wildcards
    ignore_case: bool = False
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Range:
    low: str | None  # None: open start (..B)
    high: str | None  # None: open end (A..)
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class AnyOf:
    terms: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    terms: tuple[Node, ...]


Node = Compare | Pattern | Range | AnyOf | AllOf


# ---- parser --------------------------------------------------------------------------------


class _Parser:
    def __init__(self, field: str, kind: FieldKind, text: str) -> None:
        self.field, self.kind, self.text, self.pos = field, kind, text, 0

    def fail(self, reason: str, position: int | None = None) -> FilterSyntaxError:
        where = self.pos if position is None else position
        return FilterSyntaxError(self.field, self.text, where, reason)

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def parse(self) -> Node:
        node = self.any_of()
        self.skip_spaces()
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.text[self.pos]!r}")
        return node

    def any_of(self) -> Node:
        terms = [self.all_of()]
        while self.peek("|"):
            self.pos += 1
            terms.append(self.all_of())
        return terms[0] if len(terms) == 1 else AnyOf(tuple(terms))

    def all_of(self) -> Node:
        terms = [self.atom()]
        while self.peek("&"):
            self.pos += 1
            terms.append(self.atom())
        return terms[0] if len(terms) == 1 else AllOf(tuple(terms))

    def atom(self) -> Node:
        self.skip_spaces()
        if self.peek("("):
            opened = self.pos
            self.pos += 1
            node = self.any_of()
            self.skip_spaces()
            if not self.peek(")"):
                raise self.fail("missing ')' for the '(' here", opened)
            self.pos += 1
            self.skip_spaces()
            return node
        return self.term()

    def operator(self) -> str | None:
        for op in ("<>", "<=", ">=", "<", ">", "="):
            if self.peek(op):
                self.pos += len(op)
                return op
        return None

    def term(self) -> Node:
        start = self.pos
        ignore_case = self.peek("@")
        self.pos += ignore_case
        op = self.operator()
        if not ignore_case and self.peek("@"):
            ignore_case = True
            self.pos += 1
        if self.peek(".."):  # open start: ..B
            self.pos += 2
            self.reject_third_dot()
            high, _ = self.need_value()
            self.reject_operator(op, start)
            return Range(None, self.literal(high, start), ignore_case)
        value_at = self.pos
        value, quoted = self.need_value()
        if self.peek(".."):
            self.pos += 2
            self.reject_third_dot()
            self.reject_operator(op, start)
            upper, _ = self.value(required=False)
            return Range(
                self.literal(value, value_at),
                self.literal(upper, value_at) if upper is not None else None,
                ignore_case,
            )
        has_wildcard = not quoted and ("*" in value or "?" in value)
        if has_wildcard:
            if op not in (None, "=", "<>"):
                raise self.fail(f"a wildcard cannot be used with {op!r}", value_at)
            if self.kind is FieldKind.BOOL:
                raise self.fail("wildcards do not apply to a yes/no field", value_at)
            return Pattern(self.literal(value, value_at), ignore_case, op == "<>")
        if self.kind is FieldKind.BOOL and op not in (None, "=", "<>"):
            raise self.fail(f"{op!r} does not apply to a yes/no field", start)
        return Compare(op or "=", self.literal(value, value_at), ignore_case)

    def reject_third_dot(self) -> None:
        if self.peek("."):
            raise self.fail("a range has two dots, as in 98000..98999")

    def reject_operator(self, op: str | None, start: int) -> None:
        if op is not None:
            raise self.fail(f"a range cannot follow {op!r}", start)
        if self.kind is FieldKind.BOOL:
            raise self.fail("ranges do not apply to a yes/no field", start)

    def need_value(self) -> tuple[str, bool]:
        value, quoted = self.value(required=True)
        return value or "", quoted

    def value(self, *, required: bool) -> tuple[str | None, bool]:
        """A quoted or unquoted value; returns (value, quoted). None when absent and optional."""
        self.skip_spaces()
        if self.peek("'"):
            return self.quoted(), True
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in _SPECIAL or self.peek("..") or char == "'":
                break
            self.pos += 1
        if self.pos < len(self.text) and self.text[self.pos] == "'":
            raise self.fail("a quote may only enclose a whole value")
        raw = self.text[start : self.pos].strip(" ")
        if raw:
            return raw, False
        if required:
            where = self.text[self.pos] if self.pos < len(self.text) else "end of filter"
            raise self.fail(f"expected a value, found {where!r}")
        return None, False

    def quoted(self) -> str:
        opened = self.pos
        self.pos += 1
        chars: list[str] = []
        while True:
            end = self.text.find("'", self.pos)
            if end < 0:
                raise self.fail("unterminated quote", opened)
            chars.append(self.text[self.pos : end])
            self.pos = end + 1
            if self.peek("'"):  # '' inside quotes is one quote
                chars.append("'")
                self.pos += 1
                continue
            self.skip_spaces()
            if self.pos < len(self.text) and not (
                self.text[self.pos] in _SPECIAL or self.peek("..")
            ):
                raise self.fail("unexpected text after a quoted value")
            return "".join(chars)

    def literal(self, value: str | None, position: int) -> str:
        text = value or ""
        if self.kind is FieldKind.CODE:
            return text.upper()
        if self.kind is FieldKind.OPTION:
            for name in _OPTION_NAMES.get(self.field, ()):
                if name.lower() == text.lower():
                    return name
            return text
        if self.kind is FieldKind.BOOL:
            lowered = text.lower()
            if lowered not in _TRUE | _FALSE:
                raise self.fail(f"{text!r} is not a yes/no value (true, false, yes, no)", position)
            return "true" if lowered in _TRUE else "false"
        return text


# ---- evaluation ----------------------------------------------------------------------------

Predicate = Callable[[str], bool]


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def _compile(node: Node) -> Predicate:
    if isinstance(node, Compare):
        wanted, fold = _fold(node.value, node.ignore_case), node.ignore_case
        tests: dict[str, Predicate] = {
            "=": lambda v: _fold(v, fold) == wanted,
            "<>": lambda v: _fold(v, fold) != wanted,
            "<": lambda v: _fold(v, fold) < wanted,
            ">": lambda v: _fold(v, fold) > wanted,
            "<=": lambda v: _fold(v, fold) <= wanted,
            ">=": lambda v: _fold(v, fold) >= wanted,
        }
        return tests[node.op]
    if isinstance(node, Pattern):
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in node.text)
        flags = (re.IGNORECASE | re.DOTALL) if node.ignore_case else re.DOTALL
        compiled = re.compile(regex, flags)
        negated = node.negated
        return lambda v: (compiled.fullmatch(v) is None) == negated
    if isinstance(node, Range):
        fold = node.ignore_case
        low = None if node.low is None else _fold(node.low, fold)
        high = None if node.high is None else _fold(node.high, fold)

        def in_range(value: str) -> bool:
            folded = _fold(value, fold)
            return (low is None or folded >= low) and (high is None or folded <= high)

        return in_range
    parts = [_compile(term) for term in node.terms]
    if isinstance(node, AnyOf):
        return lambda v: any(p(v) for p in parts)
    return lambda v: all(p(v) for p in parts)


def _contact_value(kind: FieldKind, raw: Any) -> str:
    if kind is FieldKind.BOOL:
        return "true" if raw is True or str(raw).lower() in _TRUE else "false"
    return raw if isinstance(raw, str) else ("" if raw is None else str(raw))


# ---- OData ---------------------------------------------------------------------------------


def _odata_literal(kind: FieldKind, value: str) -> str:
    if kind is FieldKind.BOOL:
        return value
    return "'" + value.replace("'", "''") + "'"


def _odata(field: str, kind: FieldKind, node: Node) -> str | None:
    if isinstance(node, Compare):
        if node.ignore_case:
            return None
        return f"{field} {_ODATA_OPS[node.op]} {_odata_literal(kind, node.value)}"
    if isinstance(node, Pattern):
        prefix = node.text[:-1]
        exact_prefix = (
            not node.ignore_case
            and not node.negated
            and node.text.endswith("*")
            and prefix
            and "*" not in prefix
            and "?" not in prefix
        )
        return f"startswith({field},{_odata_literal(kind, prefix)})" if exact_prefix else None
    if isinstance(node, Range):
        if node.ignore_case:
            return None
        bounds = []
        if node.low is not None:
            bounds.append(f"{field} ge {_odata_literal(kind, node.low)}")
        if node.high is not None:
            bounds.append(f"{field} le {_odata_literal(kind, node.high)}")
        return bounds[0] if len(bounds) == 1 else f"({bounds[0]} and {bounds[1]})"
    parts = [_odata(field, kind, term) for term in node.terms]
    if any(part is None for part in parts):
        return None
    joiner = " or " if isinstance(node, AnyOf) else " and "
    return "(" + joiner.join(p for p in parts if p is not None) + ")"


# ---- public API ----------------------------------------------------------------------------


def _match_all(_value: str) -> bool:
    return True


@dataclass(frozen=True)
class FieldFilter:
    field: str
    expression: str
    node: Node | None  # None: empty expression, no restriction
    _test: Predicate = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once: the router evaluates a filter for every change it sees.
        object.__setattr__(self, "_test", _match_all if self.node is None else _compile(self.node))

    @property
    def kind(self) -> FieldKind:
        return FILTERABLE_FIELDS[self.field]

    def matches(self, contact: Mapping[str, Any]) -> bool:
        return self._test(_contact_value(self.kind, contact.get(self.field)))

    def to_odata(self) -> str | None:
        """Exact OData for this field; "" when there is no restriction; None if not exact."""
        if self.node is None:
            return ""
        return _odata(self.field, FILTERABLE_FIELDS[self.field], self.node)


def parse_filter(field: str, expression: str) -> FieldFilter:
    """Parse one field's expression. Raises UnknownFilterField or FilterSyntaxError."""
    kind = FILTERABLE_FIELDS.get(field)
    if kind is None:
        raise UnknownFilterField(field)
    if not expression.strip():
        raise FilterSyntaxError(
            field, expression, len(expression),
            "empty expression: write a value (<>'' for not empty, '' for empty), "
            "or leave the field out",
        )
    return FieldFilter(field, expression, _Parser(field, kind, expression).parse())


@dataclass(frozen=True)
class ContactFilter:
    """All of a user's field filters; a contact must match every one."""

    fields: tuple[FieldFilter, ...] = ()

    @classmethod
    def parse(cls, filters: Mapping[str, str]) -> ContactFilter:
        return cls(tuple(parse_filter(f, e) for f, e in filters.items()))

    def matches(self, contact: Mapping[str, Any]) -> bool:
        return all(f.matches(contact) for f in self.fields)

    def to_odata(self) -> str | None:
        """An exact `$filter` ("" when nothing is filtered), or None: list more, match locally."""
        parts = [f.to_odata() for f in self.fields]
        if any(part is None for part in parts):
            return None
        return " and ".join(p for p in parts if p)
