"""The unified routes end to end on both simulated upstreams."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.faults import Fault
from tests.conftest import Gateway, auth


async def _connect(gateway: Gateway, provider: str) -> tuple[str, str]:
    key = await gateway.tenant()
    conn = await (
        gateway.sage_connection(key) if provider == "sage_accounting" else gateway.intacct_connection(key)
    )
    return key, conn["id"]


async def _accounts(gateway: Gateway, key: str, conn: str) -> list[dict[str, Any]]:
    r = await gateway.client.get("/v1/accounts", params={"page_size": 200}, headers=auth(key, conn))
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


@pytest.mark.parametrize("provider", ["sage_accounting", "sage_intacct"])
async def test_contacts_page_through_every_record_once(gateway: Gateway, provider: str) -> None:
    key, conn = await _connect(gateway, provider)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"page_size": 2, **({"cursor": cursor} if cursor else {})}
        r = await gateway.client.get("/v1/contacts", params=params, headers=auth(key, conn))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= 2 and all("raw" not in c for c in body["data"])
        seen += [c["id"] for c in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 3
    everything = await gateway.client.get("/v1/contacts", params={"page_size": 200}, headers=auth(key, conn))
    assert sorted(seen) == sorted(c["id"] for c in everything.json()["data"])
    one = await gateway.client.get(
        f"/v1/contacts/{seen[0]}", params={"include_raw": "true"}, headers=auth(key, conn)
    )
    assert one.status_code == 200 and one.json()["raw"]


@pytest.mark.parametrize("provider", ["sage_accounting", "sage_intacct"])
async def test_journal_round_trip_and_balance(gateway: Gateway, provider: str) -> None:
    key, conn = await _connect(gateway, provider)
    accounts = await _accounts(gateway, key, conn)
    expense = next(a for a in accounts if a["type"] == "expense")
    asset = next(a for a in accounts if a["type"] == "asset")
    journal = {
        "date": "2026-11-20",
        "reference": "UNI-1",
        "description": "Accrual",
        "lines": [
            {"account_id": expense["id"], "debit": "10.10"},
            {"account_id": asset["id"], "credit": "10.10"},
        ],
    }
    unbalanced = {**journal, "lines": [journal["lines"][0], {**journal["lines"][1], "credit": "10.09"}]}
    calls = sum(gateway.sims.sage.faults.calls.values()) + sum(gateway.sims.intacct.faults.calls.values())
    r = await gateway.client.post("/v1/journals", json=unbalanced, headers=auth(key, conn))
    assert r.status_code == 422 and r.json()["code"] == "unbalanced_journal", r.text
    floats = {**journal, "lines": [{**journal["lines"][0], "debit": 10.1}, journal["lines"][1]]}
    r = await gateway.client.post("/v1/journals", json=floats, headers=auth(key, conn))
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert (
        sum(gateway.sims.sage.faults.calls.values()) + sum(gateway.sims.intacct.faults.calls.values())
        == calls
    )

    r = await gateway.client.post(
        "/v1/journals", json=journal, headers=auth(key, conn, **{"Idempotency-Key": "uni-jnl-1"})
    )
    assert r.status_code == 201, r.text
    created = r.json()
    debits = sum(float(line["debit"]) for line in created["lines"])
    assert isinstance(created["lines"][0]["debit"], str) and round(debits, 2) == 10.10
    fetched = await gateway.client.get(f"/v1/journals/{created['id']}", headers=auth(key, conn))
    assert fetched.status_code == 200 and fetched.json()["id"] == created["id"]


async def test_unsupported_operation_is_501(gateway: Gateway) -> None:
    key, conn = await _connect(gateway, "sage_intacct")
    r = await gateway.client.post("/v1/invoices/x/void", json={"reason": "dup"}, headers=auth(key, conn))
    assert r.status_code == 501 and r.json()["code"] == "unsupported_operation"
    assert gateway.sims.intacct.faults.calls["XML create_invoice"] == 0


async def test_list_parameters_are_validated(gateway: Gateway) -> None:
    key, conn = await _connect(gateway, "sage_accounting")
    for params in (
        {"page_size": 0},
        {"page_size": 201},
        {"updated_since": "2026-01-01T00:00:00"},
        {"updated_since": "yesterday"},
        {"role": "boss"},
    ):
        r = await gateway.client.get("/v1/contacts", params=params, headers=auth(key, conn))
        assert r.status_code == 422, params
        assert r.headers["content-type"] == "application/problem+json"
    r = await gateway.client.get("/v1/journals", params={"contact_id": "x"}, headers=auth(key, conn))
    assert r.status_code == 200


async def test_read_parameter_errors_are_reported_field_by_field(gateway: Gateway) -> None:
    """The read routes validate their own parameters (api/accounting/routes.py, ReadParams): the 422 is the
    problem FastAPI's validation gives, every field at once, and authentication comes in the same order."""
    key, conn = await _connect(gateway, "sage_accounting")
    r = await gateway.client.get(
        "/v1/contacts", params={"page_size": "x", "email": "e" * 255}, headers=auth(key, conn)
    )
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "validation_error"
    fields = {e["field"]: e["code"] for e in body["errors"]}
    assert fields == {"query.page_size": "int_parsing", "query.email": "string_too_long"}
    # The header is checked with the query, before the API key: both reported, no 401.
    r = await gateway.client.get(
        "/v1/invoices/abc", params={"include_raw": "maybe"}, headers={"Authorization": "Bearer lb_wrong"}
    )
    assert r.status_code == 422
    fields = {e["field"]: e["code"] for e in r.json()["errors"]}
    assert fields == {"header.X-Connection-Id": "missing", "query.include_raw": "bool_parsing"}
    r = await gateway.client.get("/v1/accounts", headers={**auth(key, conn), "X-Connection-Id": "c" * 65})
    assert r.status_code == 422 and r.json()["errors"][0]["code"] == "string_too_long"
    # A valid header and a wrong key: 401 before the query is looked at, as before.
    r = await gateway.client.get("/v1/contacts", params={"page_size": 0}, headers={**auth("lb_wrong", conn)})
    assert r.status_code == 401
    # Repeated parameters: the last one counts; unknown ones are ignored.
    r = await gateway.client.get(
        "/v1/contacts?page_size=500&page_size=2&colour=blue", headers=auth(key, conn)
    )
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    one = r.json()["data"][0]["id"]
    assert "raw" not in r.json()["data"][0]
    r = await gateway.client.get(
        f"/v1/contacts/{one}", params={"include_raw": "true"}, headers=auth(key, conn)
    )
    assert r.status_code == 200 and r.json()["id"] == one and r.json()["raw"]
    r = await gateway.client.get(f"/v1/contacts/{one}", headers=auth(key, conn))
    assert r.status_code == 200 and "raw" not in r.json()


async def test_updated_since_filters(gateway: Gateway) -> None:
    key, conn = await _connect(gateway, "sage_accounting")
    r = await gateway.client.get(
        "/v1/contacts", params={"updated_since": "2100-01-01T00:00:00Z"}, headers=auth(key, conn)
    )
    assert r.status_code == 200 and r.json()["data"] == []
    r = await gateway.client.get(
        "/v1/contacts", params={"updated_since": "2000-01-01T00:00:00Z"}, headers=auth(key, conn)
    )
    assert r.status_code == 200 and r.json()["data"]


async def test_a_write_the_upstream_accepted_is_never_answered_as_not_executed(gateway: Gateway) -> None:
    """Sage Intacct creates the invoice, then the read-back of the new record is throttled (429): the
    answer must be 504 ``outcome_unknown`` — a 429 tells a client without an Idempotency-Key that nothing
    was done and to send it again, which would post the invoice twice."""
    key, conn = await _connect(gateway, "sage_intacct")
    sim = gateway.sims.intacct
    sim.faults.add(Fault(match="XML query:ARINVOICE", kind="status", status=429, retry_after=0, times=-1))
    body = {
        "contact_id": "customer:C-0001",
        "issue_date": "2026-11-02",
        "due_date": "2026-12-02",
        "reference": "ACCEPTED-1",
        "lines": [{"description": "Work", "account_id": "4000", "unit_price": "10.00"}],
    }
    r = await gateway.client.post("/v1/invoices", json=body, headers=auth(key, conn))
    assert r.status_code == 504 and r.json()["code"] == "outcome_unknown", r.text
    sim.faults.clear()
    reconciler = gateway.app.state.lb.extras["reconciler"]
    await reconciler.run_once()
    assert not await reconciler.candidates()
    created = [record for record in sim.records("DEMO-CO", "ARINVOICE") if "ACCEPTED-1" in repr(record)]
    assert len(created) == 1


@pytest.mark.parametrize("route", ["contacts", "invoices", "journals", "accounts", "tax-rates"])
async def test_sage_lists_of_selected_attributes_map_like_whole_records(gateway: Gateway, route: str) -> None:
    """Sage lists ask only for the attributes the mapping reads (wire §4.2), ``include_raw`` lists for all
    of them: both must give the same unified records, page by page through the cursors."""
    key, conn = await _connect(gateway, "sage_accounting")
    await _seed_sage_records(gateway, key, conn)

    async def every(include_raw: bool) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        params: dict[str, Any] = {"page_size": 3, "include_raw": str(include_raw).lower()}
        for _ in range(100):
            r = await gateway.client.get(f"/v1/{route}", params=params, headers=auth(key, conn))
            assert r.status_code == 200, r.text
            page = r.json()
            records += [{k: v for k, v in item.items() if k != "raw"} for item in page["data"]]
            if not page["next_cursor"]:
                return records
            # Follow the other mode's cursor now and then: a cursor names a page, not the attributes.
            params = {
                "cursor": page["next_cursor"],
                "include_raw": str(include_raw ^ (len(records) % 2 == 0)).lower(),
            }
        raise AssertionError("too many pages")

    selected, whole = await every(False), await every(True)
    assert len(selected) >= 2 and selected == whole
    if route == "contacts":
        assert any(c["email"] for c in selected) and any(c["currency"] for c in selected)
    if route in ("invoices", "journals"):
        assert all(record["lines"] for record in selected)


async def _seed_sage_records(gateway: Gateway, key: str, conn: str) -> None:
    """Two invoices, two journals and a contact with an address and an email, through the gateway."""
    h = auth(key, conn)
    customer = (await gateway.client.get("/v1/contacts?role=customer&page_size=1", headers=h)).json()["data"]
    codes = {a["code"]: a["id"] for a in await _accounts(gateway, key, conn)}
    contact = {
        "roles": ["customer"],
        "name": "Attribute Test Ltd",
        "email": "ap@attribute.test",
        "addresses": [{"type": "main", "line1": "1 Ledger Lane", "city": "Leeds", "country": "GB"}],
    }
    assert (await gateway.client.post("/v1/contacts", json=contact, headers=h)).status_code == 201
    for n in (1, 2):
        invoice = {
            "contact_id": customer[0]["id"],
            "issue_date": "2026-11-02",
            "due_date": "2026-12-02",
            "reference": f"ATTR-{n}",
            "lines": [
                {
                    "description": "Work",
                    "account_id": codes["4000"],
                    "unit_price": "10.00",
                    "tax_rate_id": "GB_ZERO",
                    "tax_amount": "0.00",
                }
            ],
        }
        r = await gateway.client.post("/v1/invoices", json=invoice, headers=h)
        assert r.status_code == 201, r.text
        journal = {
            "date": "2026-11-03",
            "reference": f"ATTR-{n}",
            "lines": [
                {"account_id": codes["7500"], "debit": "5.00"},
                {"account_id": codes["1200"], "credit": "5.00"},
            ],
        }
        r = await gateway.client.post("/v1/journals", json=journal, headers=h)
        assert r.status_code == 201, r.text
