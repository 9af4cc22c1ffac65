"""Wire conventions of Sage Accounting v3.1: values, error arrays, list envelopes and cursors.

Everything here is pure (no I/O). Section numbers refer to ``../shared/docs/sage-accounting-wire.md``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import msgspec
import orjson

from connectors.errors import (
    ConnectorError,
    NotFound,
    Problem,
    UpstreamError,
    UpstreamErrorItem,
    UpstreamInfo,
    ValidationFailed,
)
from connectors.http import upstream_request_id

PROVIDER = "sage_accounting"
MAX_PAGE_SIZE = 200  # §4.1: items_per_page is 1..200 on every list endpoint but /businesses

Purpose = Literal["read", "create", "update", "void"]
"""What a call was for: decides how a 404 reads (a missing record, or a missing *referenced* record)."""


# --- values ---------------------------------------------------------------------------------------


def text(value: Any) -> str | None:
    """A string field, or None. §9: some records carry the *string* ``"null"`` for an absent value."""
    # Exact type checks here and below: parsed JSON holds plain strs and dicts, and these run for several
    # fields of every record of a page.
    if value.__class__ is str and value and value != "null":
        return value
    return None


def money(value: Any) -> Decimal | None:
    """An amount. §9: amounts are JSON strings (``"350.0"``); numbers are parsed through ``str``."""
    if value is None or isinstance(value, bool) or value == "null":
        return None
    if isinstance(value, int | float | str):
        try:
            parsed = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


def money_out(value: Decimal) -> str:
    """Decimal string for a request body. §9: "Please send decimal values as strings!" [G-inv]."""
    return format(value, "f")


def ref_id(value: Any) -> str | None:
    """The ``id`` of a reference object ``{"id","displayed_as","$path"}`` (§9)."""
    # Parsed JSON objects are always dicts: a dict check is several times cheaper than the Mapping ABC's,
    # and this runs for every reference of every record of a page.
    if value.__class__ is dict:
        ident = value.get("id")
        return ident if ident.__class__ is str and ident else None
    return None


def timestamp(value: Any) -> dt.datetime | None:
    """``created_at``/``updated_at``: ISO-8601 UTC with ``Z`` (§9)."""
    if value.__class__ is not str or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)  # Python ≥ 3.11 reads the "Z" suffix as UTC
    except ValueError:
        return None
    return aware(parsed)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """§9: timestamps are UTC; one without an offset is read as UTC."""
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def date(value: Any) -> dt.date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def since_param(value: dt.datetime) -> str:
    """``updated_or_created_since`` as ``YYYY-MM-DDThh:mm:ssZ`` (§4.3, inclusive); naive means UTC."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_body(response: httpx.Response) -> Any:
    # orjson (UTF-8, §1): a third less CPU than json.loads on a page. What orjson refuses and json.loads
    # reads (a lone surrogate escape, NaN) still parses as before. Like json.loads, a leading byte-order mark
    # is tolerated.
    content = response.content
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(content)
    except ValueError:
        return None


# --- errors ---------------------------------------------------------------------------------------


def error_items(body: Any) -> tuple[UpstreamErrorItem, ...]:
    """§5.1: errors are a JSON array of ``{"$severity","$dataCode","$message","$source"}``.

    A single object is accepted too (defensive: the 401/429 bodies are UNCONFIRMED, §5.3, §6).
    """
    raw = body if isinstance(body, list) else [body] if isinstance(body, Mapping) else []
    items: list[UpstreamErrorItem] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        code = entry.get("$dataCode") or entry.get("error") or ""
        message = entry.get("$message") or entry.get("error_description") or ""
        source = entry.get("$source")
        items.append(
            UpstreamErrorItem(str(code), str(message), str(source) if isinstance(source, str) else None)
        )
    return tuple(items)


def upstream_info(response: httpx.Response) -> UpstreamInfo:
    return UpstreamInfo(
        PROVIDER,
        response.status_code,
        upstream_request_id(response.headers),
        error_items(json_body(response)),
    )


# Where a ``$source`` of a 422 lands in the unified input (§5.1: ``base`` means the whole record).
_SOURCE_FIELDS = {
    "invoice_lines": "lines",
    "journal_lines": "lines",
    "ledger_account_id": "account_id",
    "ledger_account": "account_id",
    "details": "description",
    "contact_type_ids": "roles",
    "currency_id": "currency",
    "invoice_number": "number",
    "notes": "memo",
    "main_contact_person": "email",
    "main_address": "addresses",
    "delivery_address": "addresses",
}


def unified_field(source: str | None, renames: Mapping[str, str] | None = None) -> str:
    """Translate a Sage ``$source`` (``invoice_lines.tax_amount``, ``invoice_lines[1].tax_amount``)."""
    if not source or source == "base":
        return ""
    table = {**_SOURCE_FIELDS, **(renames or {})}
    parts: list[str] = []
    for part in source.replace("[", ".[").split("."):
        if part.startswith("[") and parts:
            parts[-1] += part
        elif part:
            parts.append(table.get(part, part))
    return ".".join(parts)


def error_for(
    response: httpx.Response, purpose: Purpose, renames: Mapping[str, str] | None = None
) -> ConnectorError:
    """Map a non-2xx API answer to the error tree (CONTRACT §5), keeping Sage's own codes."""
    info = upstream_info(response)
    status = response.status_code
    first = info.errors[0].message if info.errors else ""
    suffix = f": {first}" if first else ""
    if status == 422 or (status == 404 and purpose == "create"):
        # §5.1 [STAFF #32]: RecordNotFound on a POST names a *referenced* record (contact, ledger account),
        # i.e. an input problem, not a missing resource.
        problems = [
            Problem(unified_field(item.source, renames), "upstream_invalid", item.message)
            for item in info.errors
        ] or [Problem("", "upstream_invalid", f"Sage Accounting refused the record ({status})")]
        return ValidationFailed(
            f"Sage Accounting refused the record{suffix}", upstream=info, problems=problems
        )
    if status == 404:
        return NotFound(f"Sage Accounting has no such record{suffix}", upstream=info)
    return UpstreamError(f"Sage Accounting answered {status}{suffix}", upstream=info)


# --- lists and cursors ----------------------------------------------------------------------------


def list_items(body: Any) -> tuple[list[dict[str, Any]], str | None]:
    """``$items`` and ``$next`` of a §4.1 envelope (``$next`` is null on the last page)."""
    if not isinstance(body, Mapping):
        raise UpstreamError(
            "Sage Accounting answered a list with an unexpected body", upstream=UpstreamInfo(PROVIDER)
        )
    items = [item for item in body.get("$items") or [] if isinstance(item, dict)]
    following = body.get("$next")
    return items, following if isinstance(following, str) and following else None


S = TypeVar("S", bound=msgspec.Struct)


class _Envelope(msgspec.Struct, Generic[S]):
    """§4.1: the list envelope, as far as a page is read."""

    items: list[S] = msgspec.field(name="$items", default_factory=list)
    next: str | None = msgspec.field(name="$next", default=None)


@functools.cache
def _page_decoder(record: type[S]) -> msgspec.json.Decoder[_Envelope[S]]:
    return msgspec.json.Decoder(_Envelope[record])  # type: ignore[valid-type]


def typed_items(response: httpx.Response, record: type[S]) -> tuple[list[S], str | None]:
    """``$items`` (as ``record``, a Struct of the attributes a mapping reads) and ``$next`` of a list page.

    Decoding straight into Structs reads only those attributes and builds no dict per record: on a page of
    contacts it costs less than half of parsing the JSON and reading the dicts (docs/benchmarks.md). A page
    that does not fit exactly — an attribute of an unexpected type anywhere in it, a byte-order mark — is
    read as plain JSON instead and each record converted by :func:`lenient`, so one odd value costs speed,
    never the page.
    """
    try:
        page = _page_decoder(record).decode(response.content)
    except msgspec.MsgspecError:
        items, following = list_items(json_body(response))
        return [lenient(record, item) for item in items], following
    return page.items, page.next or None


_TIMESTAMP = dt.datetime | None


def lenient(record: type[S], item: Mapping[str, Any]) -> S:
    """``item`` (a parsed JSON object) as ``record``: a field whose value has an unexpected type reads as
    absent (None), as in the plain-JSON readers above (:func:`text`, :func:`ref_id`, :func:`timestamp`)."""
    try:
        return msgspec.convert(item, record, strict=False)
    except msgspec.ValidationError:
        pass
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(record):
        value = item.get(field.encode_name)
        try:
            values[field.name] = msgspec.convert(value, field.type, strict=False)
        except msgspec.ValidationError:
            # A timestamp Python reads but RFC 3339 does not (no "T", say) still counts.
            values[field.name] = timestamp(value) if field.type == _TIMESTAMP else None
    return record(**values)


def list_path(collection: str, params: Sequence[tuple[str, str]]) -> str:
    return f"/{collection}?{urlencode(params, quote_via=quote, safe=',:')}"


def next_path(following: str, api_url: str, params: Sequence[tuple[str, str]]) -> str:
    """The relative path of the next page, with our own params re-appended where ``$next`` lost them.

    §4.1: ``$next`` is a path relative to the base URL *without* ``/v3.1``; factcheck §5: it must be
    concatenated onto the base URL, never ``urljoin``-ed (that drops ``/v3.1``). Whether ``$next`` keeps
    filters and ``attributes`` is UNCONFIRMED (§4.1), so missing ones are added back. A ``$next`` carrying
    the base path or the whole base URL (third-party claim, §4.1) is reduced to the relative form.
    """
    base = api_url.rstrip("/")
    if following.startswith(base):
        following = following[len(base) :]
    base_path = urlsplit(base).path.rstrip("/")
    if base_path and following.startswith(base_path + "/"):
        following = following[len(base_path) :]
    split = urlsplit(following)
    present = {name for name, _ in parse_qsl(split.query, keep_blank_values=True)}
    missing = [(name, value) for name, value in params if name not in present and name != "page"]
    if missing:
        joiner = "&" if split.query else "?"
        following += joiner + urlencode(missing, quote_via=quote, safe=",:")
    return following


def encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, collection: str) -> str:
    """The path a cursor stands for, refused unless it is a page of ``collection`` (callers may forge it)."""
    try:
        path = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        path = ""
    split = urlsplit(path)
    safe = path.isprintable() and "#" not in path and "\\" not in path
    if not safe or split.scheme or split.netloc or split.path != f"/{collection}":
        raise ValidationFailed(
            "The cursor is not valid for this list", problems=[Problem("cursor", "invalid", "Unknown cursor")]
        )
    return path
