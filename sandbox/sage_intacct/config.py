"""Configuration of the simulator: companies, credentials, lifetimes and limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class CompanyConfig:
    """One Intacct company. A non-empty ``entities`` (entity id → base currency) makes it multi-entity."""

    company_id: str
    name: str
    users: dict[str, str] = field(default_factory=lambda: {"demo-user": "demo-password"})
    base_currency: str = "USD"
    entities: dict[str, str] = field(default_factory=dict)
    # None: every configured sender may call this company; otherwise the documented
    # "sender not authorized" authentication failure (sage-intacct-wire.md §1.5) for the others.
    authorized_senders: tuple[str, ...] | None = None
    # TAXDETAIL exists for AU, GB and ZA tax solutions only (developer.intacct.com tax-details page).
    tax_solution: str | None = None
    seed: bool = True


def default_companies() -> list[CompanyConfig]:
    return [
        CompanyConfig(company_id="DEMO-CO", name="Demo Company Inc"),
        CompanyConfig(
            company_id="DEMO-ME",
            name="Demo Multi-Entity Group",
            entities={"US1": "USD", "UK1": "GBP"},
            tax_solution="United Kingdom - VAT",
        ),
    ]


@dataclass(frozen=True)
class SimError:
    """One ``<error>`` block (sage-intacct-wire.md §1.5)."""

    errorno: str
    description2: str
    description: str = ""
    correction: str = ""


@dataclass
class SimConfig:
    companies: list[CompanyConfig] = field(default_factory=default_companies)
    senders: dict[str, str] = field(default_factory=lambda: {"sandbox-sender": "sandbox-sender-password"})
    rest_clients: dict[str, str] = field(
        default_factory=lambda: {"sandbox-rest-client": "sandbox-rest-secret"}
    )
    public_url: str = "http://127.0.0.1:9002"
    # The only recorded getAPISession response shows 12 h between sessiontimestamp and sessiontimeout
    # (fixture xml_getapisession_success.xml); the real duration is a company/user setting (§1.3).
    session_ttl: float = 12 * 3600.0
    # REST token lifetimes are not confirmed by a primary source (§3.1); one hour is the shorter claim.
    access_token_ttl: float = 3600.0
    refresh_token_ttl: float = 180 * 86400.0
    # §4: concurrency is Intacct's real limit; "2 concurrent connections per tenant" is the only figure.
    company_concurrency: int | None = 2
    latency: float = 0.0
    clock: Callable[[], float] = time.time
    # §7: the error for a repeated function controlid under uniqueid=true is not documented.
    duplicate_controlid_error: SimError = SimError(
        errorno="BL01001973",
        description2="A successful transaction has already been recorded with the control ID '{controlid}'.",
        correction="Use a unique control ID for each function.",
    )
    max_cursors: int = 1000
