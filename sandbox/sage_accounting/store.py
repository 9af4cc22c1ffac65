"""In-memory records of one simulator instance, and the list envelope of sage-accounting-wire.md §4.

Records keep their wire representation (money already as decimal strings), so a read is a projection,
never a re-rendering. Collections keep insertion order, which is the default list order: §4.4 leaves the
default order UNCONFIRMED, and creation order matches every list example in the [MOD] files (system
contacts first, the bank ledger accounts before the fixed-asset ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from .wire import iso


@dataclass(slots=True)
class Record:
    id: str
    data: dict[str, Any]  # the wire representation, as GET /{collection}/{id} returns it
    created: float
    updated: float
    extra: dict[str, Any] = field(default_factory=dict)  # simulator-only facts, never on the wire


class Collection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.by_id: dict[str, Record] = {}
        self.order: list[Record] = []
        self.version = 0
        self._sorted: dict[tuple[str, bool], tuple[int, list[Record]]] = {}

    def __len__(self) -> int:
        return len(self.order)

    def add(self, record: Record) -> Record:
        self.by_id[record.id] = record
        self.order.append(record)
        self.version += 1
        return record

    def get(self, ident: str) -> Record | None:
        return self.by_id.get(ident)

    def touch(self, record: Record, now: float) -> None:
        record.updated = now
        record.data["updated_at"] = iso(now)
        self.version += 1

    def sorted_by(self, key: str, descending: bool) -> list[Record]:
        """Records ordered by a wire field; cached until the next write so paging stays O(page size)."""
        cached = self._sorted.get((key, descending))
        if cached is not None and cached[0] == self.version:
            return cached[1]
        ordered = sorted(self.order, key=lambda r: str(r.data.get(key) or ""), reverse=descending)
        self._sorted[(key, descending)] = (self.version, ordered)
        return ordered


@dataclass
class IdempotencyEntry:
    resource: str
    fingerprint: str
    status: int
    body: Any
    expires: float


@dataclass
class BusinessData:
    id: str
    key: str
    data: dict[str, Any]
    collections: dict[str, Collection] = field(default_factory=dict)
    idempotency: dict[str, IdempotencyEntry] = field(default_factory=dict)
    next_invoice_number: int = 1

    def coll(self, name: str) -> Collection:
        found = self.collections.get(name)
        if found is None:
            found = self.collections[name] = Collection(name)
        return found


Filter = Callable[[Record], bool]


def project(record: Record, attributes: frozenset[str] | None) -> dict[str, Any]:
    """§4.2: ``id``, ``displayed_as`` and ``$path`` always; the named attributes; everything for ``all``."""
    if attributes is None:
        return record.data
    data = record.data
    out = {"id": data["id"], "displayed_as": data.get("displayed_as"), "$path": data["$path"]}
    for name in attributes:
        if name in data:
            out[name] = data[name]
    return out


def parse_attributes(raw: str | None, default_all: bool) -> frozenset[str] | None:
    """None means "all attributes" (§4.2: ``attributes=all``; the default on single resources)."""
    if raw is None:
        return None if default_all else frozenset()
    names = frozenset(part.strip() for part in raw.split(",") if part.strip())
    return None if "all" in names else names


def page_link(path: str, page: int, per_page: int, params: Sequence[tuple[str, str]]) -> str:
    """A ``$next``/``$back`` path: relative to the base URL, without ``/v3.1`` (factcheck §5).

    Filters and ``attributes`` are carried over so that following ``$next`` keeps the same query; §4.1
    marks this UNCONFIRMED, and a connector that re-appends its own filters works either way.
    """
    rest = [(k, v) for k, v in params if k not in ("page", "items_per_page")]
    query = urlencode(
        [("page", str(page)), ("items_per_page", str(per_page)), *rest], quote_via=quote, safe=",:"
    )
    return f"{path}?{query}"


def envelope(
    records: Sequence[Record],
    *,
    path: str,
    page: int,
    per_page: int,
    params: Sequence[tuple[str, str]],
    attributes: frozenset[str] | None,
) -> dict[str, Any]:
    """The §4.1 envelope. A page past the end answers the last page ([G-pag])."""
    total = len(records)
    last_page = max(1, -(-total // per_page))
    page = min(max(page, 1), last_page)
    start = (page - 1) * per_page
    items = [project(r, attributes) for r in records[start : start + per_page]]
    return {
        "$total": total,
        "$page": page,
        "$next": page_link(path, page + 1, per_page, params) if page < last_page else None,
        "$back": page_link(path, page - 1, per_page, params) if page > 1 else None,
        "$itemsPerPage": per_page,
        "$items": items,
    }
