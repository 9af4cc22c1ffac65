"""Envelopes of the Sage Intacct REST API (sage-intacct-wire.md §3.3) and its OAuth token endpoint (§3.1).

Every REST answer is ``{"ia::result": …, "ia::meta": …}``; errors appear as ``ia::result.ia::error`` (the
documented shape, factcheck #16), as a top-level ``ia::error`` or as a bare ``{"error": {…}}`` on some
401s (third-party observation, §3.3), so the error parser accepts all three. JSON numbers are read as
``Decimal`` so no amount ever passes through a binary float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from connectors.errors import UpstreamError, UpstreamInfo

PROVIDER = "sage_intacct"


def load_json(body: bytes) -> Any:
    """Decode a REST body; numbers with a fraction become ``Decimal``."""
    try:
        return json.loads(body or b"null", parse_float=Decimal)
    except ValueError:
        raise UpstreamError(
            "Sage Intacct returned a malformed JSON document", upstream=UpstreamInfo(PROVIDER)
        ) from None


@dataclass(frozen=True)
class RestError:
    """One REST error (``ia::error`` or one of its ``details``)."""

    code: str
    message: str
    error_id: str | None = None
    target: str | None = None
    support_id: str | None = None


@dataclass(frozen=True)
class RestPage:
    """A collection or query answer: records plus ``ia::meta`` paging (``start`` is 1-based, §3.3)."""

    records: tuple[dict[str, Any], ...]
    total_count: int | None = None
    start: int | None = None
    page_size: int | None = None
    next: int | None = None
    previous: int | None = None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _error_items(error: Any) -> list[RestError]:
    if not isinstance(error, dict):
        return []
    items = [
        RestError(
            code=str(error.get("errorId") or error.get("code") or ""),
            message=str(error.get("message") or ""),
            error_id=_str(error.get("errorId")),
            target=_str(error.get("target")),
            support_id=_str(error.get("supportId")),
        )
    ]
    details = error.get("details")
    if isinstance(details, list):
        for detail in details:
            items.extend(_error_items(detail))
    return items


def parse_rest_errors(payload: Any) -> list[RestError]:
    """Every error a REST body carries (empty when it carries none)."""
    if not isinstance(payload, dict):
        return []
    result = payload.get("ia::result")
    if isinstance(result, dict) and "ia::error" in result:
        return _error_items(result["ia::error"])
    if isinstance(result, list):
        errors: list[RestError] = []
        for item in result:
            if isinstance(item, dict) and "ia::error" in item:
                errors.extend(_error_items(item["ia::error"]))
        if errors:
            return errors
    if "ia::error" in payload:
        return _error_items(payload["ia::error"])
    if isinstance(payload.get("error"), dict):
        return _error_items(payload["error"])
    return []


def parse_rest_collection(payload: Any) -> RestPage:
    """``{"ia::result": [...], "ia::meta": {totalCount, start, pageSize, next, previous}}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("ia::result"), list):
        raise UpstreamError(
            "Sage Intacct returned an unexpected REST collection", upstream=UpstreamInfo(PROVIDER)
        )
    meta = payload.get("ia::meta")
    meta = meta if isinstance(meta, dict) else {}
    records = tuple(item for item in payload["ia::result"] if isinstance(item, dict))
    return RestPage(
        records=records,
        total_count=_int(meta.get("totalCount")),
        start=_int(meta.get("start")),
        page_size=_int(meta.get("pageSize")),
        next=_int(meta.get("next")),
        previous=_int(meta.get("previous")),
    )


def parse_rest_object(payload: Any) -> dict[str, Any]:
    """``{"ia::result": {...}, "ia::meta": {...}}``: the object (or object reference ``{key,id,href}``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("ia::result"), dict):
        raise UpstreamError(
            "Sage Intacct returned an unexpected REST object", upstream=UpstreamInfo(PROVIDER)
        )
    result: dict[str, Any] = payload["ia::result"]
    return result


@dataclass(frozen=True)
class TokenResponse:
    """An OAuth token answer (§3.1). Lifetimes are not documented by a primary source: ``expires_in``
    is trusted when present."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    refresh_token: str | None = None
    refresh_expires_in: int | None = None

    def __repr__(self) -> str:
        return f"TokenResponse(token_type={self.token_type!r}, expires_in={self.expires_in!r})"


def parse_token_response(payload: Any) -> TokenResponse:
    if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
        raise UpstreamError(
            "Sage Intacct's token endpoint returned no access token", upstream=UpstreamInfo(PROVIDER)
        )
    refresh = payload.get("refresh_token")
    return TokenResponse(
        access_token=payload["access_token"],
        token_type=str(payload.get("token_type") or "Bearer"),
        expires_in=_int(payload.get("expires_in")),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        refresh_expires_in=_int(payload.get("refresh_token_expires_in")),
    )


def get_path(record: dict[str, Any], path: str) -> Any:
    """A (possibly dotted) REST field: flat query keys (``"contacts.default.email1"``, §3.4) or nested."""
    if path in record:
        return record[path]
    current: Any = record
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current
