"""In-memory company data: one table per object, id and foreign-key indexes, and an undo journal.

Writes go through :class:`Table` so the journal can roll back one function (generic create/delete are
atomic per object) or a whole ``transaction="true"`` operation (sage-intacct-wire.md §1.2). Records are
never mutated in place: an update stores a new dict, so the journal can keep references to old ones.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .config import CompanyConfig
from .schema import SCHEMAS, ObjectSchema
from .values import Record, get_path


class Table:
    def __init__(self, schema: ObjectSchema, journal: list[tuple[Table, int, Record | None]]) -> None:
        self.schema = schema
        self.rows: dict[int, Record] = {}
        self.by_id: dict[str, int] = {}
        self.index: dict[str, dict[str, list[int]]] = {name: {} for name in schema.indexes}
        self._journal = journal
        self._next = itertools.count(schema.first_recordno)
        self._unordered = False

    def next_recordno(self) -> int:
        return next(self._next)

    def get(self, recordno: int) -> Record | None:
        return self.rows.get(recordno)

    def find_id(self, value: str) -> Record | None:
        recordno = self.by_id.get(value)
        return None if recordno is None else self.rows[recordno]

    def lookup(self, field_name: str, value: str) -> list[int]:
        """Record numbers whose indexed ``field_name`` equals ``value`` (ids, RECORDNO, foreign keys)."""
        if field_name == "RECORDNO":
            return [int(value)] if value.isdigit() and int(value) in self.rows else []
        if field_name == self.schema.id_field:
            found = self.by_id.get(value)
            return [] if found is None else [found]
        return list(self.index.get(field_name, {}).get(value, []))

    def is_indexed(self, field_name: str) -> bool:
        return field_name in ("RECORDNO", self.schema.id_field) or field_name in self.index

    def keys(self) -> Iterable[int]:
        if self._unordered:
            self.rows = dict(sorted(self.rows.items()))
            self._unordered = False
        return self.rows.keys()

    def records(self) -> Iterator[Record]:
        for key in self.keys():
            yield self.rows[key]

    def put(self, recordno: int, record: Record) -> None:
        self._journal.append((self, recordno, self.rows.get(recordno)))
        self._set(recordno, record)

    def delete(self, recordno: int) -> None:
        previous = self.rows.get(recordno)
        if previous is not None:
            self._journal.append((self, recordno, previous))
            self._unset(recordno)

    def restore(self, recordno: int, record: Record | None) -> None:
        if record is None:
            self._unset(recordno)
        else:
            if recordno not in self.rows and self.rows and recordno < next(reversed(self.rows)):
                self._unordered = True
            self._set(recordno, record)

    def _set(self, recordno: int, record: Record) -> None:
        if recordno in self.rows:
            self._unindex(recordno, self.rows[recordno])
        self.rows[recordno] = record
        id_field = self.schema.id_field
        if id_field:
            value = get_path(record, id_field)
            if value:
                self.by_id[value] = recordno
        for name, values in self.index.items():
            values.setdefault(get_path(record, name) or "", []).append(recordno)

    def _unset(self, recordno: int) -> None:
        record = self.rows.pop(recordno, None)
        if record is not None:
            self._unindex(recordno, record)

    def _unindex(self, recordno: int, record: Record) -> None:
        id_field = self.schema.id_field
        if id_field:
            value = get_path(record, id_field)
            if value and self.by_id.get(value) == recordno:
                del self.by_id[value]
        for name, values in self.index.items():
            bucket = values.get(get_path(record, name) or "")
            if bucket and recordno in bucket:
                bucket.remove(recordno)


@dataclass
class Cursor:
    """A readByQuery result set kept for readMore (sage-intacct-wire.md §2.1)."""

    result_id: str
    object_name: str
    keys: list[int]
    position: int
    pagesize: int
    fields: list[str]


@dataclass
class CompanyState:
    config: CompanyConfig
    tables: dict[str, Table] = field(default_factory=dict)
    journal: list[tuple[Table, int, Record | None]] = field(default_factory=list)
    cursors: OrderedDict[str, Cursor] = field(default_factory=OrderedDict)
    last_cursor_by_object: dict[tuple[str, str], str] = field(default_factory=dict)
    completed_controlids: set[str] = field(default_factory=set)
    batch_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    max_cursors: int = 1000

    def __post_init__(self) -> None:
        for name, schema in SCHEMAS.items():
            self.tables[name] = Table(schema, self.journal)

    @property
    def company_id(self) -> str:
        return self.config.company_id

    @property
    def multi_entity(self) -> bool:
        return bool(self.config.entities)

    def table(self, name: str) -> Table:
        return self.tables[name]

    def savepoint(self) -> int:
        return len(self.journal)

    def rollback(self, savepoint: int) -> None:
        while len(self.journal) > savepoint:
            table, recordno, previous = self.journal.pop()
            table.restore(recordno, previous)

    def commit(self) -> None:
        self.journal.clear()

    def add_cursor(self, cursor: Cursor, scope: str) -> None:
        self.cursors[cursor.result_id] = cursor
        self.last_cursor_by_object[(scope, cursor.object_name)] = cursor.result_id
        while len(self.cursors) > self.max_cursors:
            self.cursors.popitem(last=False)

    def new_result_id(self) -> str:
        return secrets.token_urlsafe(24)

    def location_entity(self, location_id: str) -> str | None:
        """The entity a location belongs to: itself when top-level, else its PARENTID chain's root."""
        locations = self.table("LOCATION")
        seen: set[str] = set()
        current = location_id
        while current and current not in seen:
            seen.add(current)
            record = locations.find_id(current)
            if record is None:
                return None
            parent = get_path(record, "PARENTID") or ""
            if not parent:
                return current
            current = parent
        return None
