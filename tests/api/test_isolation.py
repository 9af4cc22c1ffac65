"""Tenant B, with its own valid key, never reaches tenant A's connections or records (CONTRACT §2)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Gateway, auth

JOURNAL = {
    "date": "2026-11-01",
    "reference": "ISO-1",
    "lines": [{"account_id": "a", "debit": "1.00"}, {"account_id": "b", "credit": "1.00"}],
}
INVOICE = {
    "contact_id": "c",
    "issue_date": "2026-11-01",
    "lines": [{"description": "x", "account_id": "a", "unit_price": "1.00"}],
}

# (method, path template, json body); {conn} is A's connection id, {rid} a record id of A's.
UNIFIED: list[tuple[str, str, Any]] = [
    ("GET", "/v1/contacts", None),
    ("GET", "/v1/contacts/{rid}", None),
    ("POST", "/v1/contacts", {"roles": ["customer"], "name": "Leak Ltd"}),
    ("PATCH", "/v1/contacts/{rid}", {"name": "Leak Ltd"}),
    ("GET", "/v1/invoices", None),
    ("GET", "/v1/invoices/{rid}", None),
    ("POST", "/v1/invoices", INVOICE),
    ("POST", "/v1/invoices/validate", INVOICE),
    ("POST", "/v1/invoices/{rid}/void", {"reason": "leak"}),
    ("GET", "/v1/journals", None),
    ("GET", "/v1/journals/{rid}", None),
    ("POST", "/v1/journals", JOURNAL),
    ("POST", "/v1/journals/validate", JOURNAL),
    ("GET", "/v1/accounts", None),
    ("GET", "/v1/tax-rates", None),
]
CONNECTION_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/connections/{conn}", None),
    ("PATCH", "/v1/connections/{conn}", {"business_id": "x"}),
    ("POST", "/v1/connections/{conn}/check", None),
    ("DELETE", "/v1/connections/{conn}", None),
]


def _upstream_calls(gateway: Gateway) -> int:
    total = sum(gateway.sims.sage.faults.calls.values())
    if gateway.sims.intacct is not None:
        total += sum(gateway.sims.intacct.faults.calls.values())
    return total


@pytest.mark.parametrize("provider", ["sage_accounting", "sage_intacct"])
async def test_other_tenant_gets_connection_not_found_everywhere(gateway: Gateway, provider: str) -> None:
    a = await gateway.tenant("a")
    b = await gateway.tenant("b")
    if provider == "sage_accounting":
        conn = await gateway.sage_connection(a)
    else:
        conn = await gateway.intacct_connection(a)
    listed = await gateway.client.get("/v1/contacts", headers=auth(a, conn["id"]))
    assert listed.status_code == 200, listed.text
    record_id = listed.json()["data"][0]["id"]
    await gateway.flush_log()
    a_requests = (await gateway.client.get("/v1/requests", headers=auth(a))).json()["data"]
    assert a_requests
    before = _upstream_calls(gateway)

    for checked, (method, template, body) in enumerate(UNIFIED + CONNECTION_ROUTES):
        path = template.format(conn=conn["id"], rid=record_id)
        headers = auth(
            b, conn["id"], **({"Idempotency-Key": f"iso-{checked}"} if method in ("POST", "PATCH") else {})
        )
        r = await gateway.client.request(method, path, json=body, headers=headers)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["code"] == "connection_not_found", (method, path)
    for suffix in ("contacts", "contacts?x=1"):
        r = await gateway.client.get(f"/v1/proxy/{suffix}", headers=auth(b, conn["id"]))
        assert r.status_code == 404 and r.json()["code"] == "connection_not_found"
    assert _upstream_calls(gateway) == before, "tenant B caused upstream calls"

    r = await gateway.client.get(f"/v1/requests/{a_requests[0]['id']}", headers=auth(b))
    assert r.status_code == 404
    r = await gateway.client.get("/v1/requests", params={"connection_id": conn["id"]}, headers=auth(b))
    assert r.status_code == 200 and all(item["connection_id"] != conn["id"] for item in r.json()["data"])
    assert conn["id"] not in [
        c["id"] for c in (await gateway.client.get("/v1/connections", headers=auth(b))).json()["data"]
    ]
    still = await gateway.client.get(f"/v1/connections/{conn['id']}", headers=auth(a))
    assert still.status_code == 200 and still.json()["status"] == "active"
