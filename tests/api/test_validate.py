"""Dry runs (``POST /v1/invoices/validate``, ``/v1/journals/validate``): every problem at once, nothing written."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from models import IdempotencyRecord, WriteIntent
from tests.api.test_idempotency import sage
from tests.conftest import Gateway, auth


def upstream_writes(calls: Counter[str]) -> dict[str, int]:
    return {k: n for k, n in calls.items() if not k.startswith(("GET ", "XML get", "XML read", "XML query"))}


async def nothing_stored(gateway: Gateway) -> None:
    async with gateway.app.state.lb.db.session() as session:
        for table in (WriteIntent, IdempotencyRecord):
            assert (await session.execute(select(func.count()).select_from(table))).scalar_one() == 0


def codes(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["field"], p["code"]) for p in report["problems"]}


async def test_sage_journal_reports_every_problem_and_writes_nothing(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    before = len(sim.state("journals"))
    sim.faults.reset_counters()
    body = {
        "date": "2026-11-03",
        "reference": "VAL-1",
        "currency": "EUR",
        "colour": "blue",
        "lines": [
            {"account_id": s.expense_account_id, "debit": "10.00", "department_id": "D1"},
            {"account_id": "0" * 32, "credit": "9.99"},
        ],
    }
    r = await gateway.client.post("/v1/journals/validate", json=body, headers=s.headers("ignored-key"))
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["valid"] is False
    found = codes(report)
    assert ("colour", "unsupported_field") in found  # not in the unified model
    assert ("currency", "unsupported_field") in found  # not carried by Sage journals
    assert ("lines[0].department_id", "unsupported_field") in found
    assert ("lines", "unbalanced_journal") in found  # 10.00 against 9.99, exact to the cent
    assert any(f.startswith("lines[1]") for f, _ in found)  # the unknown ledger account
    assert len(report["problems"]) == len({(p["field"], p["code"], p["message"]) for p in report["problems"]})
    assert len(sim.state("journals")) == before
    assert upstream_writes(sim.faults.calls) == {}
    await nothing_stored(gateway)


async def test_sage_invoice_valid_and_invalid(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    before = len(sim.state("sales_invoices"))
    sim.faults.reset_counters()
    ok = await gateway.client.post("/v1/invoices/validate", json=s.invoice("VAL-OK"), headers=s.headers())
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"valid": True, "problems": []}
    bad = s.invoice("VAL-BAD")
    bad["contact_id"] = "0" * 32
    bad["lines"][0]["account_id"] = "1" * 32
    bad["lines"][0]["tax_rate_id"] = "NOPE"
    bad["lines"][0]["quantity"] = "0"
    r = await gateway.client.post("/v1/invoices/validate", json=bad, headers=s.headers())
    assert r.status_code == 200, r.text
    assert r.json()["valid"] is False
    # The model's own check (quantity) is reported as a problem, not a 422.
    assert ("lines[0]", "value_error") in codes(r.json())
    del bad["lines"][0]["quantity"]
    r = await gateway.client.post("/v1/invoices/validate", json=bad, headers=s.headers())
    found = codes(r.json())
    assert ("contact_id", "not_found") in found
    assert any(f.startswith("lines[0]") for f, _ in found)
    assert len(found) >= 2
    assert len(sim.state("sales_invoices")) == before
    assert upstream_writes(sim.faults.calls) == {}
    await nothing_stored(gateway)


async def test_body_that_is_not_json_is_400(gateway: Gateway) -> None:
    s = await sage(gateway)
    r = await gateway.client.post(
        "/v1/journals/validate",
        content=b"{not json",
        headers={**s.headers(), "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_json"


async def test_intacct_journal_dry_run_writes_nothing(gateway: Gateway) -> None:
    if gateway.sims.intacct is None:
        pytest.skip("the Intacct simulator is not available")
    key = await gateway.tenant()
    conn = await gateway.intacct_connection(key)
    sim = gateway.sims.intacct
    before = len(sim.records("DEMO-CO", "GLBATCH"))
    sim.faults.reset_counters()
    body = {
        "date": "2026-11-03",
        "reference": "VAL-I",
        "lines": [
            {"account_id": "6000", "debit": "10.00"},
            {"account_id": "9999", "credit": "10.00"},
            {"account_id": "1000", "debit": "1.00"},
        ],
    }
    r = await gateway.client.post("/v1/journals/validate", json=body, headers=auth(key, conn["id"]))
    assert r.status_code == 200, r.text
    found = codes(r.json())
    assert ("lines", "unbalanced_journal") in found
    assert any(f.startswith("lines[1]") for f, _ in found), found  # account 9999 does not exist
    assert len(sim.records("DEMO-CO", "GLBATCH")) == before
    assert not [k for k in upstream_writes(sim.faults.calls) if "create" in k or "update" in k]
    await nothing_stored(gateway)
