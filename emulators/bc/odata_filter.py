"""The `$filter` subset a contact sync needs, parsed once into a Python predicate.

Grammar (OData v4 precedence: not > comparison > and > or):

    expr    := and ('or' and)*
    and     := unary ('and' unary)*
    unary   := 'not' unary | primary
    primary := '(' expr ')' | operand [cmp operand]
    operand := property | literal | func '(' args ')'
    cmp     := eq | ne | gt | ge | lt | le
    func    := startswith | endswith | contains | tolower | toupper

Literals: 'string' ('' escapes a quote), true/false/null, integers, unquoted ISO datetimes
(`2019-08-18T20:05:51.603Z`) and dates. Datetimes compare as microseconds since the epoch.

String comparison is case-sensitive. UNCONFIRMED for BC: AL filters are case-sensitive unless
prefixed with '@', while SQL collations in BC online are case-insensitive; we take the AL rule,
and the product normalises emails itself, so it does not depend on either.

`seek_lower_bound()` finds a top-level `lastModifiedDateTime gt|ge X` conjunct so the store can
start from a bisect on its modified-time index instead of scanning.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from contactsync.emulators.bc.errors import ODataError
from contactsync.emulators.bc.state import parse_datetime_us

Row = dict[str, Any]
Predicate = Callable[[Row], bool]

# Each contact's timestamp string is parsed once, not once per query.
_dt_us = lru_cache(maxsize=1 << 18)(parse_datetime_us)

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
      | (?P<date>\d{4}-\d{2}-\d{2})
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_/.]*)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)

COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
FUNCTIONS = {"startswith", "endswith", "contains", "tolower", "toupper"}


@dataclass(frozen=True)
class Tok:
    kind: str  # str | dt | date | num | name | punct | end
    text: str
    pos: int


def _error(message: str) -> ODataError:
    return ODataError(400, "BadRequest", message)


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _error(f"Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup or "punct"
        toks.append(Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    toks.append(Tok("end", "", len(text)))
    return toks


# -- AST -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prop:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Any
    kind: str  # string | datetime | bool | null | number


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Cmp:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def take(self) -> Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise _error(f"'{text}' expected at position {tok.pos} in '{self.text}'.")

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok.kind == "name" and tok.text == word:
            self.i += 1
            return True
        return False

    def parse(self) -> Any:
        node = self.expr()
        if self.peek().kind != "end":
            tok = self.peek()
            raise _error(f"Syntax error at position {tok.pos} in '{self.text}'.")
        return node

    def expr(self) -> Any:
        items = [self.and_()]
        while self.keyword("or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_(self) -> Any:
        items = [self.unary()]
        while self.keyword("and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def unary(self) -> Any:
        if self.keyword("not"):
            return Not(self.unary())
        return self.primary()

    def primary(self) -> Any:
        if self.peek().text == "(":
            self.take()
            node = self.expr()
            self.expect(")")
            return node
        left = self.operand()
        tok = self.peek()
        if tok.kind == "name" and tok.text in COMPARISONS:
            self.take()
            return Cmp(tok.text, left, self.operand())
        return left

    def operand(self) -> Any:
        tok = self.take()
        if tok.kind == "str":
            return Lit(tok.text[1:-1].replace("''", "'"), "string")
        if tok.kind == "dt":
            try:
                return Lit(parse_datetime_us(tok.text), "datetime")
            except ValueError:
                raise _error(f"Invalid datetime literal '{tok.text}'.") from None
        if tok.kind == "date":
            return Lit(tok.text, "string")  # Edm.Date compares as ISO text
        if tok.kind == "num":
            return Lit(float(tok.text) if "." in tok.text else int(tok.text), "number")
        if tok.kind == "name":
            if tok.text in ("true", "false"):
                return Lit(tok.text == "true", "bool")
            if tok.text == "null":
                return Lit(None, "null")
            if self.peek().text == "(":
                if tok.text not in FUNCTIONS:
                    raise _error(f"Unknown function '{tok.text}'.")
                self.take()
                args = [self.expr()]
                while self.peek().text == ",":
                    self.take()
                    args.append(self.expr())
                self.expect(")")
                return Call(tok.text, tuple(args))
            return Prop(tok.text)
        raise _error(f"Expression expected at position {tok.pos} in '{self.text}'.")


def parse(text: str) -> Any:
    return _Parser(text).parse()


# -- compilation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Schema:
    """Property name -> kind ("string", "bool", "datetime", "date")."""

    kinds: dict[str, str]
    entity: str = "Microsoft.NAV.contact"


def _value_fn(node: Any, schema: Schema) -> tuple[Callable[[Row], Any], str]:
    """Compile an operand to (row -> value, kind)."""
    if isinstance(node, Lit):
        value = node.value
        return (lambda _row: value), node.kind
    if isinstance(node, Prop):
        kind = schema.kinds.get(node.name)
        if kind is None:
            raise ODataError(
                400, "BadRequest_NotFound",
                f"Could not find a property named '{node.name}' on type '{schema.entity}'.",
            )
        name = node.name
        if kind == "datetime":
            return (lambda row: _dt_us(row[name]) if row.get(name) else None), "datetime"
        return (lambda row: row.get(name)), kind
    if isinstance(node, Call):
        if node.name in ("tolower", "toupper") and len(node.args) == 1:
            inner, _ = _value_fn(node.args[0], schema)
            if node.name == "tolower":
                return (lambda row: (inner(row) or "").lower()), "string"
            return (lambda row: (inner(row) or "").upper()), "string"
        return _compile(node, schema), "bool"
    return _compile(node, schema), "bool"


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and b is not None and a > b,
    "ge": lambda a, b: a is not None and b is not None and a >= b,
    "lt": lambda a, b: a is not None and b is not None and a < b,
    "le": lambda a, b: a is not None and b is not None and a <= b,
}


def _compile(node: Any, schema: Schema) -> Predicate:
    if isinstance(node, BoolOp):
        parts = [_compile(i, schema) for i in node.items]
        if node.op == "and":
            return lambda row: all(p(row) for p in parts)
        return lambda row: any(p(row) for p in parts)
    if isinstance(node, Not):
        inner = _compile(node.item, schema)
        return lambda row: not inner(row)
    if isinstance(node, Cmp):
        left, lk = _value_fn(node.left, schema)
        right, rk = _value_fn(node.right, schema)
        if "null" not in (lk, rk) and lk != rk and not {lk, rk} <= {"string", "date"}:
            raise _error(
                f"A binary operator with incompatible types was detected. Found operand types "
                f"'{lk}' and '{rk}' for operator kind '{node.op}'."
            )
        op = _OPS[node.op]
        return lambda row: bool(op(left(row), right(row)))
    if isinstance(node, Call) and node.name in ("startswith", "endswith", "contains"):
        if len(node.args) != 2:
            raise _error(f"Function '{node.name}' takes two arguments.")
        a, _ = _value_fn(node.args[0], schema)
        b, _ = _value_fn(node.args[1], schema)
        method = {"startswith": str.startswith, "endswith": str.endswith,
                  "contains": str.__contains__}[node.name]
        return lambda row: bool(method(a(row) or "", b(row) or ""))
    if isinstance(node, Prop) and schema.kinds.get(node.name) == "bool":
        name = node.name
        return lambda row: bool(row.get(name))
    raise _error("The $filter expression must evaluate to a single boolean value.")


def compile_filter(text: str, schema: Schema) -> tuple[Predicate, Any]:
    """Parse and compile; returns (predicate, ast)."""
    ast = parse(text)
    return _compile(ast, schema), ast


def seek_lower_bound(ast: Any, prop: str = "lastModifiedDateTime") -> int | None:
    """Microseconds X if every match must have `prop` >= X (a top-level `prop gt|ge X` that
    is ANDed with the rest), else None."""
    items = ast.items if isinstance(ast, BoolOp) and ast.op == "and" else (ast,)
    best: int | None = None
    for item in items:
        if (
            isinstance(item, Cmp) and item.op in ("gt", "ge")
            and isinstance(item.left, Prop) and item.left.name == prop
            and isinstance(item.right, Lit) and item.right.kind == "datetime"
        ):
            bound = int(item.right.value)
            best = bound if best is None else max(best, bound)
    return best
