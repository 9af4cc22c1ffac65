"""Filters: the SQL-like ``readByQuery`` query string (§2.1) and the ``query`` filter tree (§2.2).

Both compile to the same AST and then to a predicate. Comparisons are typed by the object schema
(numbers as Decimal, dates and timestamps as datetimes, text case-sensitive as documented: "String
operands are case-sensitive"). readByQuery compares enum fields against their stored codes (§2.8).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from lxml import etree

from .schema import ObjectSchema
from .store import Table
from .values import Record, get_path, parse_decimal, parse_timestamp

Predicate = Callable[[Record], bool]


class QueryError(Exception):
    """A query the gateway rejects; the message becomes ``description2``."""


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str
    value: str


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True)
class Like:
    field: str
    pattern: str
    negate: bool = False


@dataclass(frozen=True)
class IsNull:
    field: str
    negate: bool = False


@dataclass(frozen=True)
class Between:
    field: str
    low: str
    high: str
    negate: bool = False


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Cmp | In | Like | IsNull | Between | And | Or | Not

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:\\.|[^'\\])*')
      | (?P<num>-?\d+(?:\.\d+)?(?![\w.]))
      | (?P<op><=|>=|<>|!=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"Invalid query near '{text[pos : pos + 20].strip()}'")
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group(kind)
        if kind == "str":
            tokens.append(("value", re.sub(r"\\(.)", r"\1", raw[1:-1])))
        elif kind == "num":
            tokens.append(("value", raw))
        elif kind == "word" and raw.upper() in _KEYWORDS:
            tokens.append(("kw", raw.upper()))
        else:
            tokens.append((kind, raw))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            found = token[1] if token else "end of query"
            raise QueryError(f"Invalid query: expected {value or kind} but found '{found}'")
        self.pos += 1
        return token[1]

    def accept(self, kind: str, value: str) -> bool:
        token = self.peek()
        if token == (kind, value):
            self.pos += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.parse_or()
        extra = self.peek()
        if extra is not None:
            raise QueryError(f"Invalid query: unexpected '{extra[1]}'")
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.accept("kw", "OR"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_not()]
        while self.accept("kw", "AND"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self) -> Node:
        if self.accept("kw", "NOT"):
            return Not(self.parse_not())
        if self.accept("punct", "("):
            node = self.parse_or()
            self.take("punct", ")")
            return node
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        field_name = self.take("word").upper()
        if self.accept("kw", "IS"):
            negate = self.accept("kw", "NOT")
            self.take("kw", "NULL")
            return IsNull(field_name, negate)
        negate = self.accept("kw", "NOT")
        if self.accept("kw", "IN"):
            self.take("punct", "(")
            values = [self.take("value")]
            while self.accept("punct", ","):
                values.append(self.take("value"))
            self.take("punct", ")")
            return In(field_name, tuple(values), negate)
        if self.accept("kw", "LIKE"):
            return Like(field_name, self.take("value"), negate)
        if negate:
            raise QueryError("Invalid query: NOT must precede IN or LIKE here")
        op = self.take("op")
        return Cmp(field_name, "!=" if op == "<>" else op, self.take("value"))


def parse_legacy_query(text: str) -> Node | None:
    """Parse a readByQuery ``<query>``; empty means every record."""
    if not text.strip():
        return None
    return _Parser(_tokenize(text)).parse()


_FILTER_OPS = {
    "equalto": "=",
    "notequalto": "!=",
    "lessthan": "<",
    "lessthanorequalto": "<=",
    "greaterthan": ">",
    "greaterthanorequalto": ">=",
}


def parse_filter(element: etree._Element) -> Node:
    """Parse the single operator inside a ``query`` ``<filter>`` (XSD operators, §2.2)."""
    tag = str(element.tag)
    children = [c for c in element if isinstance(c.tag, str)]
    if tag in ("and", "or"):
        if len(children) < 2:
            raise QueryError(f"Invalid filter: <{tag}> needs at least two conditions")
        items = tuple(parse_filter(c) for c in children)
        return And(items) if tag == "and" else Or(items)
    field_el = element.find("field")
    if field_el is None or not (field_el.text or "").strip():
        raise QueryError(f"Invalid filter: <{tag}> without <field>")
    field_name = (field_el.text or "").strip().upper()
    values = [(v.text or "") for v in element.findall("value")]
    if tag in _FILTER_OPS:
        if len(values) != 1:
            raise QueryError(f"Invalid filter: <{tag}> takes one <value>")
        return Cmp(field_name, _FILTER_OPS[tag], values[0])
    if tag in ("in", "notin"):
        if not 1 <= len(values) <= 1000:
            raise QueryError(f"Invalid filter: <{tag}> takes 1 to 1000 values")
        return In(field_name, tuple(values), tag == "notin")
    if tag in ("like", "notlike"):
        if len(values) != 1:
            raise QueryError(f"Invalid filter: <{tag}> takes one <value>")
        return Like(field_name, values[0], tag == "notlike")
    if tag == "between":
        if len(values) != 2:
            raise QueryError("Invalid filter: <between> takes two values")
        return Between(field_name, values[0], values[1])
    if tag in ("isnull", "isnotnull"):
        return IsNull(field_name, tag == "isnotnull")
    raise QueryError(f"Invalid filter operator <{tag}>")


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Mode:
    """``legacy``: readByQuery (stored codes); else the ``query`` function (display values)."""

    legacy: bool
    case_insensitive: bool = False


class Compiler:
    def __init__(self, schema: ObjectSchema, mode: Mode) -> None:
        self.schema = schema
        self.mode = mode
        self.paths = schema.all_paths()

    def _field(self, name: str) -> str:
        if name not in self.paths:
            raise QueryError(f"Invalid field {name} in query for object {self.schema.name}")
        return name

    def _getter(self, name: str) -> Callable[[Record], Any]:
        """A function returning the typed value of a field, None when empty."""
        ftype = self.schema.type_of(name)
        codes = self.schema.query_codes.get(name) if self.mode.legacy else None
        lower = self.mode.case_insensitive
        if ftype == "number":

            def get_number(record: Record) -> Any:
                raw = get_path(record, name)
                return parse_decimal(raw) if raw else None

            return get_number
        if ftype in ("date", "timestamp"):

            def get_time(record: Record) -> Any:
                raw = get_path(record, name)
                return parse_timestamp(raw) if raw else None

            return get_time
        if ftype == "bool" and self.mode.legacy:

            def get_flag(record: Record) -> Any:
                raw = get_path(record, name)
                return None if not raw else ("T" if raw == "true" else "F")

            return get_flag

        def get_text(record: Record) -> Any:
            raw = get_path(record, name)
            if raw is None:
                return None
            if codes is not None:
                raw = codes.get(raw, raw)
            return raw.lower() if lower else raw

        return get_text

    def _literal(self, name: str, text: str) -> Any:
        ftype = self.schema.type_of(name)
        if ftype == "number":
            value = parse_decimal(text)
            if value is None:
                raise QueryError(f"Invalid number '{text}' for field {name}")
            return value
        if ftype in ("date", "timestamp"):
            stamp = parse_timestamp(text)
            if stamp is None:
                raise QueryError(f"Invalid date '{text}' for field {name}; use MM/DD/YYYY [HH:MM:SS]")
            return stamp
        return text.lower() if self.mode.case_insensitive else text

    def compile(self, node: Node) -> Predicate:
        if isinstance(node, And):
            parts = [self.compile(item) for item in node.items]
            return lambda r: all(p(r) for p in parts)
        if isinstance(node, Or):
            parts = [self.compile(item) for item in node.items]
            return lambda r: any(p(r) for p in parts)
        if isinstance(node, Not):
            inner = self.compile(node.item)
            return lambda r: not inner(r)
        name = self._field(node.field)
        get = self._getter(name)
        if isinstance(node, Cmp):
            literal = self._literal(name, node.value)
            fn = _OPS[node.op]

            def cmp(record: Record) -> bool:
                # SQL semantics: an empty (NULL) field satisfies no comparison, not even "!=".
                value = get(record)
                return value is not None and value != "" and bool(fn(value, literal))

            return cmp
        if isinstance(node, In):
            literals = {self._literal(name, v) for v in node.values}
            negate = node.negate

            def member(record: Record) -> bool:
                value = get(record)
                return value is not None and value != "" and (value in literals) != negate

            return member
        if isinstance(node, Like):
            flags = re.IGNORECASE if self.mode.case_insensitive else 0
            regex = re.compile(_like_to_regex(node.pattern), flags | re.DOTALL)
            negate = node.negate

            def like(record: Record) -> bool:
                value = get_path(record, name)
                return (value is not None and regex.fullmatch(value) is not None) != negate

            return like
        if isinstance(node, Between):
            low, high = self._literal(name, node.low), self._literal(name, node.high)
            negate = node.negate

            def between(record: Record) -> bool:
                value = get(record)
                return (value is not None and value != "" and low <= value <= high) != negate

            return between
        negate = node.negate
        return lambda r: (get(r) in (None, "")) != negate


def _like_to_regex(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def compile_node(schema: ObjectSchema, node: Node | None, mode: Mode) -> Predicate | None:
    return None if node is None else Compiler(schema, mode).compile(node)


def _index_value(schema: ObjectSchema, name: str, text: str) -> str:
    if schema.type_of(name) == "number":
        value = parse_decimal(text)
        if value is not None and value == value.to_integral_value():
            return str(int(value))
    return text


def plan(table: Table, node: Node | None, mode: Mode) -> list[int] | None:
    """Candidate record numbers from an index when the filter pins an indexed field, else None.

    This keeps ``RECORDKEY IN (...)`` over ARINVOICEITEM and id lookups proportional to the answer
    rather than to the table. The full predicate still runs on every candidate.
    """
    if node is None or mode.case_insensitive:
        return None
    if isinstance(node, And):
        for item in node.items:
            found = plan(table, item, mode)
            if found is not None:
                return found
        return None
    values: Sequence[str]
    if isinstance(node, Cmp) and node.op == "=":
        values = (node.value,)
    elif isinstance(node, In) and not node.negate:
        values = node.values
    else:
        return None
    if not table.is_indexed(node.field) or node.field in table.schema.query_codes:
        return None
    keys: set[int] = set()
    for value in values:
        keys.update(table.lookup(node.field, _index_value(table.schema, node.field, value)))
    return sorted(keys)


def sort_key(schema: ObjectSchema, name: str) -> Callable[[Record], tuple[int, Any]]:
    ftype = schema.type_of(name)

    def key(record: Record) -> tuple[int, Any]:
        raw = get_path(record, name)
        if not raw:
            return (0, "")
        if ftype == "number":
            return (1, parse_decimal(raw) or Decimal(0))
        if ftype in ("date", "timestamp"):
            return (1, parse_timestamp(raw) or datetime.min)
        return (1, raw)

    return key
