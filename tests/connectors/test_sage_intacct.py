"""Sage Intacct connector: the shared contract suite on the simulator, three ways.

* a standalone company over the XML gateway;
* the same with REST credentials (customers then go over REST);
* an entity-scoped connection on the multi-entity company (locations required on journal lines).

The harness below is also used by ``test_sage_intacct_behaviour.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest

from connectors.base import (
    CallOutcome,
    ConnectorContext,
    MemoryCredentialStore,
    OpenGate,
    Resource,
    UpstreamCall,
)
from connectors.sage_intacct.config import (
    SageIntacctApp,
    SageIntacctCredentials,
    SageIntacctRestCredentials,
    SageIntacctSettings,
)
from connectors.sage_intacct.connector import SageIntacctConnector
from sandbox.sage_intacct import CompanyConfig, SageIntacctSimulator, SimConfig
from tests.connectors.contract import ConnectorContract, ContractFixtures, UpstreamCount

BASE_URL = "http://intacct.sim"
SENDER_ID, SENDER_PASSWORD = "sandbox-sender", "sandbox-sender-password"
USER, PASSWORD = "demo-user", "demo-password"
REST_CLIENT, REST_SECRET = "sandbox-rest-client", "sandbox-rest-secret"


class FakeClock:
    """One clock for the simulator and the connector, so session expiry can be tested without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, dt.UTC)


class RecordingGate(OpenGate):
    """A gate that keeps every call and outcome (labels, kinds, bodies) for assertions."""

    def __init__(self) -> None:
        self.calls: list[UpstreamCall] = []
        self.outcomes: list[CallOutcome] = []

    async def record(self, call: UpstreamCall, outcome: CallOutcome) -> None:
        self.calls.append(call)
        self.outcomes.append(outcome)


def companies() -> list[CompanyConfig]:
    # The standalone company gets tax details too, so tax rates can be listed (the simulator seeds
    # TAXDETAIL only for companies with a tax solution).
    return [
        CompanyConfig(company_id="DEMO-CO", name="Demo Company Inc", tax_solution="United Kingdom - VAT"),
        CompanyConfig(
            company_id="DEMO-ME",
            name="Demo Multi-Entity Group",
            entities={"US1": "USD", "UK1": "GBP"},
            tax_solution="United Kingdom - VAT",
        ),
    ]


def make_sim(**config: Any) -> SageIntacctSimulator:
    config.setdefault("companies", companies())
    return SageIntacctSimulator(SimConfig(public_url=BASE_URL, **config))


def make_app(**overrides: Any) -> SageIntacctApp:
    values: dict[str, Any] = {
        "sender_id": SENDER_ID,
        "sender_password": SENDER_PASSWORD,
        "xml_url": f"{BASE_URL}/ia/xml/xmlgw.phtml",
        "rest_url": f"{BASE_URL}/ia/api/v1",
    }
    values.update(overrides)
    return SageIntacctApp(**values)


def credentials(
    company: str = "DEMO-CO", entity: str | None = None, rest: bool = False, password: str = PASSWORD
) -> SageIntacctCredentials:
    return SageIntacctCredentials(
        company_id=company,
        user_id=USER,
        user_password=password,
        entity_id=entity,
        rest=SageIntacctRestCredentials(client_id=REST_CLIENT, client_secret=REST_SECRET) if rest else None,
    )


@dataclass
class Harness:
    sim: SageIntacctSimulator
    http: httpx.AsyncClient
    app: SageIntacctApp
    company: str
    store: MemoryCredentialStore
    settings: SageIntacctSettings
    gate: RecordingGate = field(default_factory=RecordingGate)

    def connector(self) -> SageIntacctConnector:
        """A new instance per "request", as the gateway builds them; state lives in the store."""
        ctx = ConnectorContext(
            http=self.http, app=self.app, settings=self.settings, store=self.store, gate=self.gate
        )
        return SageIntacctConnector(ctx)

    def calls(self, key: str) -> int:
        return int(self.sim.faults.calls.get(key, 0))

    def total_calls(self) -> int:
        return sum(self.sim.faults.calls.values())

    def count(self, object_name: str) -> int:
        return len(self.sim.records(self.company, object_name))


def client_for(sim: SageIntacctSimulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE_URL)


async def make_harness(
    sim: SageIntacctSimulator | None = None,
    *,
    company: str = "DEMO-CO",
    entity: str | None = None,
    rest: bool = False,
    http: httpx.AsyncClient | None = None,
) -> Harness:
    sim = sim or make_sim()
    http = http or client_for(sim)
    app = make_app()
    tokens = await SageIntacctConnector.establish(http, app, credentials(company, entity, rest))
    store = MemoryCredentialStore(tokens.secrets, tokens.expires_at)
    return Harness(sim, http, app, company, store, SageIntacctSettings(**tokens.settings))


_OBJECTS = {
    Resource.contacts: ("CUSTOMER", "VENDOR"),
    Resource.invoices: ("ARINVOICE",),
    Resource.journals: ("GLBATCH",),
    Resource.accounts: ("GLACCOUNT",),
    Resource.tax_rates: ("TAXDETAIL",),
}


def counter(harness: Harness) -> Callable[[Resource], Any]:
    async def count(resource: Resource) -> int:
        return sum(harness.count(name) for name in _OBJECTS[resource])

    return count


class _IntacctContract(ConnectorContract):
    company = "DEMO-CO"
    entity: str | None = None
    rest = False
    location: str | None = None

    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        harness = await make_harness(company=self.company, entity=self.entity, rest=self.rest)
        yield harness
        await harness.http.aclose()

    @pytest.fixture
    def connector(self, harness: Harness) -> SageIntacctConnector:
        return harness.connector()

    @pytest.fixture
    def fixtures(self) -> ContractFixtures:
        # Seed data of sandbox/sage_intacct/seed.py. create_invoice carries no line tax (its lineitem has
        # no tax element), so the contract invoice is untaxed.
        return ContractFixtures(
            customer_id="customer:C-0001",
            revenue_account_id="4000",
            expense_account_id="6000",
            bank_account_id="1000",
            tax_rate_id=None,
            tax_percent=Decimal(0),
            location_id=self.location,
        )

    @pytest.fixture
    def upstream_count(self, harness: Harness) -> UpstreamCount:
        return counter(harness)


class TestSageIntacctContract(_IntacctContract):
    """Standalone company, XML gateway only."""


class TestSageIntacctRestContract(_IntacctContract):
    """REST credentials given: customer reads and writes go over REST."""

    rest = True


class TestSageIntacctEntityContract(_IntacctContract):
    """Entity-scoped session on the multi-entity company."""

    company = "DEMO-ME"
    entity = "US1"
    location = "US1-HQ"
