"""Wire conventions of Sage Accounting v3.1: money strings, ids, timestamps, references and error arrays."""

from __future__ import annotations

import datetime as dt
import json
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

CENT = Decimal("0.01")


def fmt_money(value: Decimal) -> str:
    """Ruby ``BigDecimal#to_s('F')`` style: at least one fractional digit, trailing zeros trimmed.

    sage-accounting-wire.md §9: ``"350.0"``, ``"6.8"``, ``"1599.11"``, ``"0.83"``.
    """
    if value == 0:
        return "0.0"
    text = format(value.normalize(), "f")
    return text if "." in text else text + ".0"


def round_money(value: Decimal) -> Decimal:
    # §9: "round the result to two decimal places. This is the only precision supported by Accounting."
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


class ApiError(Exception):
    """An error answered as Sage's error array (§5.1) with an HTTP status (§5.2)."""

    def __init__(self, status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None):
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.headers = headers or {}


def error_item(data_code: str, message: str, source: str = "") -> dict[str, str]:
    return {"$severity": "error", "$dataCode": data_code, "$message": message, "$source": source}


def invalid(source: str, message: str = "This field is required.") -> dict[str, str]:
    # §5.1: validation failures are 422 RecordInvalid with $source naming the field ("base" = whole record).
    return error_item("RecordInvalid", message, source)


def not_found() -> ApiError:
    # §5.1 [STAFF #32] RecordNotFound "Couldn't find record."; §5.2 404 for an invalid id.
    return ApiError(404, [error_item("RecordNotFound", "Couldn't find record.")])


def access_denied() -> ApiError:
    # §5.1 / §10.8 [G-access]: "The 403 Forbidden response always has the following body".
    return ApiError(
        403,
        [
            error_item(
                "MultiUserAccessDenied",
                "The current user is not allowed to access that resource with that method.",
            )
        ],
    )


# §5.1/§5.2: documented $dataCode/$message pairs where Sage gives one; the others are UNCONFIRMED names.
_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request could not be understood."),
    401: ("AuthenticationFailure", "The access token is invalid or has expired."),
    403: (
        "MultiUserAccessDenied",
        "The current user is not allowed to access that resource with that method.",
    ),
    404: ("RecordNotFound", "Couldn't find record."),
    405: ("MethodNotAllowed", "A request has been made using the wrong HTTP verb."),
    415: ("UnsupportedMediaType", "The media/language being passed in the request is not supported."),
    422: ("RecordInvalid", "Invalid data has been passed."),
    429: ("TooManyRequests", "Too many requests have been made against the API."),
    500: ("UnexpectedError", "An unexpected error occurred."),
    502: ("BadGateway", "An upstream server returned an invalid response."),
    503: ("ServiceUnavailable", "One of our servers required to serve this request could not be reached."),
    504: ("GatewayTimeout", "An upstream server did not answer in time."),
}


def status_errors(status: int) -> list[dict[str, str]]:
    code, message = _STATUS_ERRORS.get(status, ("UnexpectedError", "An unexpected error occurred."))
    return [error_item(code, message)]


def ref(collection: str, ident: str, displayed_as: str) -> dict[str, str]:
    """Reference object ``{"id","displayed_as","$path"}`` with a relative ``$path`` (§9)."""
    return {"id": ident, "displayed_as": displayed_as, "$path": f"/{collection}/{ident}"}


def iso(ts: float) -> str:
    """ISO-8601 UTC with ``Z`` and no fraction, e.g. ``2022-12-30T13:59:24Z`` (§9)."""
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(value: str) -> float:
    """Parse ``updated_or_created_since``: a date or a date-time with offset (§4.3); naive means UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def parse_date(value: Any) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def parse_decimal(value: Any) -> Decimal | None:
    """Amounts arrive as strings or JSON numbers (§9); floats go through ``str`` to avoid binary noise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        try:
            parsed = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
