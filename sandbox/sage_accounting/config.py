"""Configuration of the Sage Business Cloud Accounting v3.1 simulator.

Defaults are the documented values of ``../shared/docs/sage-accounting-wire.md``; every point the doc marks
UNCONFIRMED is a setting here, so a test can pin the behaviour it depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MissingTaxAmount = Literal["reject", "zero"]
IdempotencyBodyMismatch = Literal["replay", "reject"]
OutOfRange = Literal["reject", "clamp"]


@dataclass
class SimBusiness:
    """A business (company file). ``key`` is how users refer to it; ``id`` is generated when empty."""

    key: str
    name: str
    id: str = ""


@dataclass
class SimUser:
    """A Sage user who can approve the OAuth consent. The first business listed is the *lead business*."""

    login: str
    first_name: str
    last_name: str
    email: str
    businesses: list[str]
    id: str = ""


def _default_businesses() -> list[SimBusiness]:
    return [
        SimBusiness(key="demo", name="Demo Trading Ltd"),
        SimBusiness(key="multi-1", name="Multi Holdings Ltd"),
        SimBusiness(key="multi-2", name="Multi Subsidiary Ltd"),
    ]


def _default_users() -> list[SimUser]:
    return [
        SimUser("demo", "Dana", "Demo", "dana.demo@example.co.uk", ["demo"]),
        SimUser("multi", "Morgan", "Multi", "morgan.multi@example.co.uk", ["multi-1", "multi-2"]),
    ]


@dataclass
class SimConfig:
    """Knobs of one simulator instance. Fields marked *runtime* may be changed with ``PATCH /_sim/config``."""

    # OAuth app registrations: client_id -> client_secret.
    clients: dict[str, str] = field(
        default_factory=lambda: {"ledgerbridge-sandbox": "ledgerbridge-sandbox-secret"}
    )
    # Registered redirect URIs, matched exactly and case-sensitively (sage-accounting-wire.md §2.1).
    # None accepts any absolute http(s) URL, which is convenient for ad-hoc sandboxes.
    redirect_uris: list[str] | None = None
    businesses: list[SimBusiness] = field(default_factory=_default_businesses)
    users: list[SimUser] = field(default_factory=_default_users)
    default_user: str = "demo"

    code_ttl: float = 60.0  # §2.2 "expires after 60 seconds"
    access_token_ttl: int = 300  # runtime; §2.2 expires_in
    refresh_token_ttl: int = 2_678_400  # §2.2 refresh_token_expires_in (31 days)

    latency: float = 0.0  # runtime; seconds added to every /v3.1 call
    daily_quota: int = 1_296_000  # runtime; §6, per app (client_id) and UTC day
    max_concurrent_requests: int = 150  # runtime; §6, per app
    rate_limit_retry_after: int | None = None  # runtime; §6: no Retry-After is documented on real 429s

    request_id_header: str = "x_request_id"  # §8 spells it so; the exact wire spelling is UNCONFIRMED

    # §10.2 / factcheck §1: the invoicing guide also requires quantity and tax_rate_id on lines.
    require_quantity_and_tax_rate: bool = True  # runtime
    # factcheck §1: missing line tax_amount on a non-zero rate → 422 (default) or silently 0.0 (v3 behaviour).
    missing_tax_amount: MissingTaxAmount = "reject"  # runtime

    idempotency_ttl: float = 7 * 86_400.0  # factcheck §2 "For the next 7 days"
    idempotency_body_mismatch: IdempotencyBodyMismatch = "replay"  # runtime; UNCONFIRMED (factcheck §2)

    # §4.1: items_per_page is declared 1..200 but what the API does outside the range is UNCONFIRMED.
    items_per_page_out_of_range: OutOfRange = "reject"  # runtime

    default_credit_days: int = 30  # business default for due_date when the contact has no credit_days
    seed: int | None = None  # fixes generated ids (not tokens) for reproducible runs


RUNTIME_FIELDS = frozenset(
    {
        "access_token_ttl",
        "latency",
        "daily_quota",
        "max_concurrent_requests",
        "rate_limit_retry_after",
        "require_quantity_and_tax_rate",
        "missing_tax_amount",
        "idempotency_body_mismatch",
        "items_per_page_out_of_range",
    }
)
