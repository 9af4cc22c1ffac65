"""Value formats of the simulated Intacct APIs and the record type shared by XML and REST.

sage-intacct-wire.md §2.8: generic functions use ``mm/dd/yyyy`` dates, timestamps are
``MM/DD/YYYY HH:MM:SS`` without a time zone, decimals have no thousands separators, all values are text.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TypeAlias

Value: TypeAlias = "str | dict[str, Value]"
Record: TypeAlias = dict[str, Value]

_DATE_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_TIMESTAMP_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2})$")
CENT = Decimal("0.01")


def parse_decimal(text: str) -> Decimal | None:
    """A decimal as Intacct accepts it: plain digits, optional sign and point, no separators (§2.8)."""
    if not re.fullmatch(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)\s*", text):
        return None
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        return None


def fmt_decimal(value: Decimal) -> str:
    """Recorded responses print amounts without trailing zeros (``<TOTALDUE>5900</TOTALDUE>``, fixture
    ``xml_readbyquery_apbill_with_resultid.xml``)."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def round_cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def parse_date(text: str) -> date | None:
    """``mm/dd/yyyy``; the PHP SDK writes ``m/d/Y`` so single-digit parts are accepted too (§2.6)."""
    m = _DATE_RE.match(text.strip())
    if not m:
        return None
    try:
        return date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    except ValueError:
        return None


def parse_timestamp(text: str) -> datetime | None:
    """``MM/DD/YYYY HH:MM:SS`` or a bare date (midnight), as used in WHENMODIFIED queries (§2.8)."""
    text = text.strip()
    m = _TIMESTAMP_RE.match(text)
    if m:
        try:
            return datetime(
                int(m.group(3)),
                int(m.group(1)),
                int(m.group(2)),
                int(m.group(4)),
                int(m.group(5)),
                int(m.group(6)),
            )
        except ValueError:
            return None
    day = parse_date(text)
    return datetime(day.year, day.month, day.day) if day else None


def fmt_date(value: date) -> str:
    return f"{value.month:02d}/{value.day:02d}/{value.year:04d}"


def fmt_timestamp(value: datetime) -> str:
    return f"{fmt_date(value)} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def iso_offset(epoch: float) -> str:
    """``2020-11-19T15:39:40+00:00``, the form of ``sessiontimestamp``/``sessiontimeout`` (§1.3)."""
    return utc(epoch).replace(microsecond=0).isoformat()


def timestamp_to_iso_z(text: str) -> str | None:
    """REST timestamps are ISO-8601 UTC ``2024-09-24T14:18:20Z`` (§3.5); the store keeps UTC wall time."""
    parsed = parse_timestamp(text)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ") if parsed else None


def date_to_iso(text: str) -> str | None:
    parsed = parse_date(text)
    return parsed.isoformat() if parsed else None


def get_path(record: Record, path: str) -> str | None:
    """A field of a record; dotted names reach into nested blocks such as ``DISPLAYCONTACT.EMAIL1``."""
    current: Value = record
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current if isinstance(current, str) else None
