"""The bench's direct baselines are the very upstream requests the gateway sends (issue #8: "through the
gateway minus direct to the simulator"); a direct call that asks the simulator for more than the gateway
does makes the gateway look cheaper than it is."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from bench.scenarios import sage_contacts_path
from connectors.base import ListQuery
from sandbox.sage_accounting import SageAccountingSimulator, SimConfig
from tests.connectors.test_sage_accounting import Harness, RecordingStore, SpyTransport, sage_app


async def test_the_direct_contacts_call_is_the_request_the_sage_connector_sends() -> None:
    sim = SageAccountingSimulator(SimConfig(seed=7))
    events: list[tuple[str, str]] = []
    spy = SpyTransport(httpx.ASGITransport(app=sim), events)
    async with httpx.AsyncClient(transport=spy) as http:
        harness = Harness(sim, http, spy, events, sage_app())
        store = RecordingStore(await harness.connect(), events)
        connector = harness.connector(store, sim.lead_business_id("demo"))
        page = await connector.list_contacts(ListQuery(page_size=50))
    assert page.data
    [sent] = spy.api("GET", "/contacts")
    bench = urlsplit(sage_contacts_path(50))
    assert sent.path == f"/v3.1{bench.path}"
    assert sent.query == parse_qs(bench.query)
    assert sent.query["attributes"] != ["all"]
