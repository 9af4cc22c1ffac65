"""The connector error tree.

Every failure a connector can raise is a :class:`ConnectorError` carrying the stable ``code`` and HTTP
``status`` of CONTRACT §5, so the gateway renders it without knowing the provider. Errors are classified by
what the caller should do (retry later, re-authorize, fix the input) and whose fault it is; upstream details
(the provider's own error codes and request id) travel in :class:`UpstreamInfo`, never secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UpstreamErrorItem:
    """One error as the upstream reported it (Sage ``$dataCode``/``$message``, Intacct ``errorno``/description)."""

    code: str
    message: str
    source: str | None = None


@dataclass(frozen=True)
class UpstreamInfo:
    """What the upstream said: rendered as ``upstream`` in problem+json."""

    provider: str
    status: int | None = None
    request_id: str | None = None
    errors: tuple[UpstreamErrorItem, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "status": self.status,
            "request_id": self.request_id,
            "errors": [{"code": e.code, "message": e.message} for e in self.errors],
        }


@dataclass(frozen=True)
class Problem:
    """One problem with a caller's input (validation and dry runs report all of them at once)."""

    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class ConnectorError(Exception):
    """Base of every connector failure. ``code``/``status`` follow CONTRACT §5."""

    code: str = "upstream_error"
    status: int = 502
    title: str = "Upstream error"

    def __init__(
        self,
        detail: str,
        *,
        upstream: UpstreamInfo | None = None,
        retry_after: float | None = None,
        problems: list[Problem] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.upstream = upstream
        self.retry_after = retry_after
        self.problems = problems or []


class NotFound(ConnectorError):
    """The record does not exist upstream (or is not visible to this connection)."""

    code, status, title = "not_found", 404, "Not found"


class ValidationFailed(ConnectorError):
    """The input cannot be posted: the caller must fix it. ``problems`` lists every issue found."""

    code, status, title = "validation_error", 422, "Validation failed"


class UnbalancedJournal(ValidationFailed):
    """Journal debits and credits differ (computed in ``Decimal``, exact to the cent)."""

    code, title = "unbalanced_journal", "Unbalanced journal"


class UnsupportedField(ValidationFailed):
    """A write sets a field this provider cannot carry: refused rather than silently dropped (CONTRACT §4)."""

    code, title = "unsupported_field", "Unsupported field"


class UnsupportedOperation(ConnectorError):
    """The provider does not offer this resource × operation."""

    code, status, title = "unsupported_operation", 501, "Unsupported operation"


class InvalidCredentials(ConnectorError):
    """Credentials given at connection time were rejected by the upstream; nothing is stored."""

    code, status, title = "invalid_credentials", 422, "Invalid credentials"


class ReauthorizationRequired(ConnectorError):
    """The stored grant is dead (``invalid_grant``, revoked): the end customer must authorize again."""

    code, status, title = "reauthorization_required", 409, "Reauthorization required"


class BusinessSelectionRequired(ConnectorError):
    """The Sage user has several businesses and none was picked for this connection yet."""

    code, status, title = "business_selection_required", 409, "Business selection required"


class RateLimited(ConnectorError):
    """Refused before calling the upstream because a budget is exhausted. ``policy`` names the policy."""

    code, status, title = "upstream_rate_limited", 429, "Upstream rate limit"

    def __init__(self, detail: str, *, policy: str, retry_after: float, upstream: UpstreamInfo | None = None):
        super().__init__(detail, upstream=upstream, retry_after=retry_after)
        self.policy = policy


class UpstreamError(ConnectorError):
    """The upstream refused or failed the call in a way the caller cannot fix by retrying the same input."""


class UpstreamUnavailable(ConnectorError):
    """The upstream is down or overloaded (5xx after retries, connection refused)."""

    code, status, title = "upstream_unavailable", 503, "Upstream unavailable"


class UpstreamTimeout(ConnectorError):
    """A read timed out (safe to retry: nothing was written)."""

    code, status, title = "upstream_timeout", 504, "Upstream timeout"


class OutcomeUnknown(ConnectorError):
    """A write was sent but its outcome could not be established (timeout, dropped connection, 5xx, 524).

    Never a failure: the write may have landed. Retrying with the same write guard is safe: the
    connector reconciles by the upstream duplicate guard instead of posting twice.
    """

    code, status, title = "outcome_unknown", 504, "Outcome unknown"


@dataclass
class ErrorCollector:
    """Collects every :class:`Problem` of an input so validation reports them all at once."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, field_name: str, code: str, message: str) -> None:
        self.problems.append(Problem(field_name, code, message))

    def raise_if_any(self, detail: str = "The request has invalid fields") -> None:
        if not self.problems:
            return
        codes = {p.code for p in self.problems}
        cls: type[ValidationFailed] = ValidationFailed
        if codes == {"unsupported_field"}:
            cls = UnsupportedField
        elif codes == {"unbalanced_journal"}:
            cls = UnbalancedJournal
        raise cls(detail, problems=self.problems)
