"""Behaviour of the Sage Business Cloud Accounting v3.1 simulator (sage-accounting-wire.md, factcheck.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn

from sandbox.faults import Fault
from sandbox.sage_accounting import SageAccountingSimulator, SimConfig

CLIENT_ID = "ledgerbridge-sandbox"
CLIENT_SECRET = "ledgerbridge-sandbox-secret"
REDIRECT = "https://gateway.example/oauth/callback"


@pytest.fixture
def sim() -> SageAccountingSimulator:
    return SageAccountingSimulator(SimConfig(seed=7))


@pytest.fixture
async def client(sim: SageAccountingSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as c:
        yield c


def bearer(sim: SageAccountingSimulator, user: str = "demo", scope: str = "full_access") -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.issue_tokens(user, scope=scope)['access_token']}"}


def customer_id(sim: SageAccountingSimulator, business_id: str | None = None) -> str:
    return next(
        c["id"]
        for c in sim.state("contacts", business_id)
        if c["contact_types"][0]["id"] == "CUSTOMER" and not c["system"]
    )


def vendor_id(sim: SageAccountingSimulator) -> str:
    return next(
        c["id"] for c in sim.state("contacts") if c["contact_types"][0]["id"] == "VENDOR" and not c["system"]
    )


def ledger_id(sim: SageAccountingSimulator, code: int) -> str:
    return next(la["id"] for la in sim.state("ledger_accounts") if la["nominal_code"] == code)


def invoice_body(sim: SageAccountingSimulator, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "contact_id": customer_id(sim),
        "date": "2024-05-15",
        "reference": "PO-1001",
        "invoice_lines": [
            {
                "description": "Consulting",
                "ledger_account_id": ledger_id(sim, 4000),
                "quantity": "2",
                "unit_price": "150.00",
                "tax_rate_id": "GB_STANDARD",
                "tax_amount": "60.00",
            },
            {
                "description": "Books",
                "ledger_account_id": ledger_id(sim, 4000),
                "quantity": 1,
                "unit_price": 12.5,
                "tax_rate_id": "GB_ZERO",
            },
        ],
    }
    body.update(overrides)
    return {"sales_invoice": body}


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(b"v" * 40).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def authorize(client: httpx.AsyncClient, **extra: str) -> dict[str, list[str]]:
    params = {
        "filter": "apiv3.1",
        "client_id": CLIENT_ID,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": "full_access",
        "state": "csrf-123",
        **extra,
    }
    response = await client.get("/oauth2/auth/central", params=params)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


async def exchange(client: httpx.AsyncClient, code: str, **extra: str) -> httpx.Response:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT,
        **extra,
    }
    return await client.post("/token", data=form)


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    return await client.post("/token", data=form, auth=(CLIENT_ID, CLIENT_SECRET))


# ------------------------------------------------------------------------------------------- OAuth


async def test_authorization_code_flow_with_pkce_and_single_use_code(client: httpx.AsyncClient) -> None:
    verifier, challenge = pkce_pair()
    callback = await authorize(client, code_challenge=challenge, code_challenge_method="S256")
    code = callback["code"][0]
    assert code.startswith("GB/")
    assert callback["country"] == ["GB"]
    assert callback["state"] == ["csrf-123"]

    wrong = await exchange(client, code, code_verifier="not-the-verifier")
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"

    ok = await exchange(client, code, code_verifier=verifier)
    assert ok.status_code == 200
    tokens = ok.json()
    assert set(tokens) == {
        "access_token",
        "scope",
        "token_type",
        "expires_in",
        "refresh_token",
        "refresh_token_expires_in",
        "requested_by_id",
    }
    assert (tokens["token_type"], tokens["expires_in"], tokens["refresh_token_expires_in"]) == (
        "bearer",
        300,
        2678400,
    )
    assert tokens["scope"] == "full_access"

    replay = await exchange(client, code, code_verifier=verifier)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"

    me = await client.get("/v3.1/user", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"].replace("-", "") == tokens["requested_by_id"].replace("-", "")


async def test_code_expires_after_sixty_seconds_and_redirect_uri_must_match(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    code = (await authorize(client))["code"][0]
    mismatch = await exchange(client, code, redirect_uri="https://gateway.example/other")
    assert mismatch.json()["error"] == "invalid_grant"
    sim.advance_clock(61)
    expired = await exchange(client, code)
    assert expired.status_code == 400
    assert expired.json()["error"] == "invalid_grant"


async def test_authorize_error_redirects_and_sim_user(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    assert (await authorize(client, response_type="token"))["error"] == ["unsupported_response_type"]
    assert (await authorize(client, scope="everything"))["error"] == ["invalid_scope"]
    unknown = await client.get(
        "/oauth2/auth/central",
        params={"client_id": "nope", "response_type": "code", "redirect_uri": REDIRECT},
    )
    assert unknown.status_code == 400

    code = (await authorize(client, sim_user="multi"))["code"][0]
    tokens = (await exchange(client, code)).json()
    businesses = await client.get(
        "/v3.1/businesses", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert businesses.json()["$total"] == 2


async def test_client_authentication_in_body_or_basic(client: httpx.AsyncClient) -> None:
    code = (await authorize(client))["code"][0]
    bad = await client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        auth=(CLIENT_ID, "wrong"),
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_client"
    good = await client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert good.status_code == 200


async def test_refresh_rotates_and_old_refresh_token_is_invalid_grant(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    first = sim.issue_tokens()
    second = await refresh(client, first["refresh_token"])
    assert second.status_code == 200
    new = second.json()
    assert new["refresh_token"] != first["refresh_token"]
    assert new["refresh_token_expires_in"] == 2678400

    reused = await refresh(client, first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert (await refresh(client, new["refresh_token"])).status_code == 200

    assert sim.faults.calls["POST /token"] == 3
    assert sim.faults.calls["POST /token grant_type=refresh_token"] == 3
    assert sim.token_grants["refresh_token"] == 3


async def test_revoke_kills_the_refresh_family_but_not_access_tokens(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    tokens = sim.issue_tokens()
    revoked = await client.post(
        "/revoke",
        data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "token": tokens["refresh_token"]},
    )
    assert (revoked.status_code, revoked.json()) == (200, {"success": "ok"})
    assert (await refresh(client, tokens["refresh_token"])).json()["error"] == "invalid_grant"
    # §2.5: access tokens cannot be revoked and live out their five minutes.
    user = await client.get("/v3.1/user", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert user.status_code == 200


async def test_expired_or_unknown_access_token_is_401_error_array(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim)
    assert (await client.get("/v3.1/contacts", headers=headers)).status_code == 200
    expire = await client.post("/_sim/expire-tokens")
    assert expire.json()["expired"] >= 1
    response = await client.get("/v3.1/contacts", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert isinstance(body, list)
    assert set(body[0]) == {"$severity", "$dataCode", "$message", "$source"}
    assert (await client.get("/v3.1/contacts")).status_code == 401

    patched = await client.patch("/_sim/config", json={"access_token_ttl": 30})
    assert patched.json()["access_token_ttl"] == 30
    short = sim.issue_tokens()
    assert short["expires_in"] == 30
    sim.advance_clock(31)
    auth = {"Authorization": f"Bearer {short['access_token']}"}
    assert (await client.get("/v3.1/user", headers=auth)).status_code == 401


# ------------------------------------------------------------------------------------------- businesses


async def test_x_business_lead_echo_and_absent_on_businesses(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim, "multi")
    lead, second = sim.business_ids("multi")
    plain = await client.get("/v3.1/contacts", headers=headers)
    assert plain.headers["x-business"] == lead
    assert plain.headers["x_request_id"]

    chosen = await client.get("/v3.1/contacts", headers={**headers, "X-Business": second})
    assert chosen.headers["x-business"] == second
    assert {c["id"] for c in chosen.json()["$items"]} == {c["id"] for c in sim.state("contacts", second)[:20]}

    listing = await client.get("/v3.1/businesses", headers=headers)
    assert "x-business" not in listing.headers
    assert listing.headers["x_request_id"]
    body = listing.json()
    assert body["$items_per_page"] == 2147483647
    assert "$itemsPerPage" not in body
    assert [b["id"] for b in body["$items"]] == [lead, second]
    lead_business = await client.get("/v3.1/businesses/lead", headers=headers)
    assert lead_business.json()["id"] == lead
    assert "x-business" not in lead_business.headers
    assert "x-business" not in (await client.get("/v3.1/user", headers=headers)).headers

    foreign = await client.get("/v3.1/contacts", headers={**bearer(sim, "demo"), "X-Business": second})
    assert foreign.status_code == 403
    assert foreign.json()[0]["$dataCode"] == "MultiUserAccessDenied"


# ------------------------------------------------------------------------------------------- lists


async def test_following_next_yields_every_record_exactly_once(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    created = set(sim.seed_sales_invoices(45, lines_per_invoice=2))
    headers = bearer(sim)
    seen: list[str] = []
    url: str | None = "/sales_invoices?items_per_page=20&attributes=all&status_id=UNPAID"
    pages = 0
    while url:
        response = await client.get("/v3.1" + url, headers=headers)
        body = response.json()
        assert body["$total"] == 45
        assert body["$itemsPerPage"] == 20
        seen += [item["id"] for item in body["$items"]]
        assert all("invoice_lines" in item for item in body["$items"])
        pages += 1
        if body["$page"] > 1:
            assert body["$back"].startswith(f"/sales_invoices?page={body['$page'] - 1}&items_per_page=20")
        url = body["$next"]
        if url:
            assert (
                url == f"/sales_invoices?page={pages + 1}&items_per_page=20&attributes=all&status_id=UNPAID"
            )
    assert pages == 3
    assert len(seen) == len(set(seen)) == 45
    assert set(seen) == created

    past_end = (await client.get("/v3.1/sales_invoices?page=99&items_per_page=20", headers=headers)).json()
    assert (past_end["$page"], len(past_end["$items"]), past_end["$next"]) == (3, 5, None)

    too_big = await client.get("/v3.1/sales_invoices?items_per_page=201", headers=headers)
    assert too_big.status_code == 422
    assert too_big.json()[0]["$source"] == "items_per_page"


async def test_attributes_select_fields(sim: SageAccountingSimulator, client: httpx.AsyncClient) -> None:
    headers = bearer(sim)
    default = (await client.get("/v3.1/contacts", headers=headers)).json()["$items"][0]
    assert set(default) == {"id", "displayed_as", "$path"}
    assert default["$path"] == f"/contacts/{default['id']}"
    some = (await client.get("/v3.1/contacts?attributes=reference,credit_limit", headers=headers)).json()
    assert set(some["$items"][0]) == {"id", "displayed_as", "$path", "reference", "credit_limit"}
    single = (await client.get(f"/v3.1/contacts/{default['id']}", headers=headers)).json()
    assert "contact_types" in single
    assert "created_at" in single


async def test_updated_or_created_since_is_inclusive(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    sim.advance_clock(3600)
    headers = bearer(sim)
    created = await client.post(
        "/v3.1/contacts",
        headers=headers,
        json={"contact": {"name": "Later Ltd", "contact_type_ids": ["CUSTOMER"]}},
    )
    stamp = created.json()["updated_at"]
    since = await client.get("/v3.1/contacts", headers=headers, params={"updated_or_created_since": stamp})
    assert [c["id"] for c in since.json()["$items"]] == [created.json()["id"]]
    sim.advance_clock(1)
    after = await client.get(
        "/v3.1/contacts", headers=headers, params={"updated_or_created_since": stamp.replace("Z", "+00:00")}
    )
    assert after.json()["$total"] == 1
    later = await client.get(
        "/v3.1/contacts", headers=headers, params={"updated_or_created_since": "2999-01-01"}
    )
    assert later.json()["$total"] == 0


async def test_contact_create_update_and_filters(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim)
    payload = {
        "contact": {
            "name": "Great Example Ltd",
            "reference": "GRE001",
            "contact_type_ids": ["CUSTOMER"],
            "credit_limit": 2000,
            "main_contact_person": {"name": "Ann", "email": "ann@great.example"},
        }
    }
    created = await client.post("/v3.1/contacts", headers=headers, json=payload)
    assert created.status_code == 201
    contact = created.json()
    assert contact["displayed_as"] == "Great Example Ltd (GRE001)"
    assert contact["credit_limit"] == "2000.0"
    assert contact["email"] == "ann@great.example"

    duplicate = await client.post("/v3.1/contacts", headers=headers, json=payload)
    assert duplicate.status_code == 422
    assert duplicate.json()[0]["$source"] == "reference"
    two_types = await client.post(
        "/v3.1/contacts",
        headers=headers,
        json={"contact": {"name": "X", "contact_type_ids": ["CUSTOMER", "VENDOR"]}},
    )
    assert two_types.status_code == 422

    sim.advance_clock(5)
    updated = await client.put(
        f"/v3.1/contacts/{contact['id']}", headers=headers, json={"contact": {"name": "Greater Example Ltd"}}
    )
    assert updated.status_code == 200
    assert updated.json()["displayed_as"] == "Greater Example Ltd (GRE001)"
    assert updated.json()["updated_at"] > contact["updated_at"]
    assert updated.json()["created_at"] == contact["created_at"]

    found = await client.get("/v3.1/contacts", headers=headers, params={"email": "ANN@great.example"})
    assert [c["id"] for c in found.json()["$items"]] == [contact["id"]]
    vendors = await client.get(
        "/v3.1/contacts?contact_type_id=VENDOR&attributes=contact_types", headers=headers
    )
    assert {c["contact_types"][0]["id"] for c in vendors.json()["$items"]} == {"VENDOR"}
    search = await client.get("/v3.1/contacts?search=greater", headers=headers)
    assert search.json()["$total"] == 1

    not_json = await client.post("/v3.1/contacts", headers=headers, content=b"name=x")
    assert not_json.status_code == 415
    missing = await client.get("/v3.1/contacts/0123456789abcdef0123456789abcdef", headers=headers)
    assert missing.status_code == 404
    assert missing.json()[0]["$dataCode"] == "RecordNotFound"


# ------------------------------------------------------------------------------------------- invoices


async def test_invoice_amounts_are_client_tax_and_decimal_strings(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    body = invoice_body(sim)
    body["sales_invoice"]["invoice_lines"][0]["tax_amount"] = (
        "59.99"  # deliberately not 20 %: never recomputed
    )
    response = await client.post("/v3.1/sales_invoices", headers=bearer(sim), json=body)
    assert response.status_code == 201
    invoice = response.json()
    assert invoice["status"]["id"] == "UNPAID"
    assert invoice["displayed_as"] == invoice["invoice_number"] == "SI-1"
    assert [ln["net_amount"] for ln in invoice["invoice_lines"]] == ["300.0", "12.5"]
    assert [ln["tax_amount"] for ln in invoice["invoice_lines"]] == ["59.99", "0.0"]
    assert (invoice["net_amount"], invoice["tax_amount"], invoice["total_amount"]) == (
        "312.5",
        "59.99",
        "372.49",
    )
    assert invoice["outstanding_amount"] == "372.49"
    assert invoice["due_date"] == "2024-06-14"


async def test_invoice_validation_errors(sim: SageAccountingSimulator, client: httpx.AsyncClient) -> None:
    headers = bearer(sim)
    no_tax = invoice_body(sim)
    del no_tax["sales_invoice"]["invoice_lines"][0]["tax_amount"]
    missing_tax = await client.post("/v3.1/sales_invoices", headers=headers, json=no_tax)
    assert missing_tax.status_code == 422
    assert missing_tax.json() == [
        {
            "$severity": "error",
            "$dataCode": "RecordInvalid",
            "$message": "This field is required.",
            "$source": "invoice_lines.tax_amount",
        }
    ]

    vendor = await client.post(
        "/v3.1/sales_invoices", headers=headers, json=invoice_body(sim, contact_id=vendor_id(sim))
    )
    assert vendor.status_code == 422
    assert vendor.json()[0]["$dataCode"] == "RecordInvalid"

    bare = invoice_body(sim)
    bare["sales_invoice"]["invoice_lines"] = [{"quantity": "1", "tax_rate_id": "GB_ZERO"}]
    required = await client.post("/v3.1/sales_invoices", headers=headers, json=bare)
    assert required.status_code == 422
    assert {e["$source"] for e in required.json()} == {
        "invoice_lines.description",
        "invoice_lines.ledger_account_id",
        "invoice_lines.unit_price",
    }
    no_quantity = invoice_body(sim)
    del no_quantity["sales_invoice"]["invoice_lines"][1]["quantity"]
    assert (await client.post("/v3.1/sales_invoices", headers=headers, json=no_quantity)).status_code == 422

    unknown = await client.post(
        "/v3.1/sales_invoices", headers=headers, json=invoice_body(sim, contact_id="f" * 32)
    )
    assert unknown.status_code == 404
    assert sim.state("sales_invoices") == []


async def test_void_with_reason_in_query_or_body(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim)
    first = (await client.post("/v3.1/sales_invoices", headers=headers, json=invoice_body(sim))).json()
    second = (await client.post("/v3.1/sales_invoices", headers=headers, json=invoice_body(sim))).json()

    no_reason = await client.delete(f"/v3.1/sales_invoices/{first['id']}", headers=headers)
    assert no_reason.status_code == 422
    assert no_reason.json()[0]["$source"] == "void_reason"

    by_query = await client.delete(
        f"/v3.1/sales_invoices/{first['id']}?void_reason=Duplicate", headers=headers
    )
    assert by_query.status_code == 200
    assert (by_query.json()["status"]["id"], by_query.json()["void_reason"]) == ("VOID", "Duplicate")

    by_body = await client.request(
        "DELETE",
        f"/v3.1/sales_invoices/{second['id']}",
        headers=headers,
        json={"void_reason": "Created by accident"},
    )
    assert by_body.status_code == 200
    assert by_body.json()["void_reason"] == "Created by accident"
    listed = await client.get("/v3.1/sales_invoices?status_id=VOID", headers=headers)
    assert listed.json()["$total"] == 2


# ------------------------------------------------------------------------------------------- journals


async def test_journal_must_balance(sim: SageAccountingSimulator, client: httpx.AsyncClient) -> None:
    headers = bearer(sim)
    lines = [
        {"ledger_account_id": ledger_id(sim, 1200), "debit": 100, "credit": 0, "details": "Asset side"},
        {"ledger_account_id": ledger_id(sim, 3000), "debit": "0", "credit": "99.99"},
    ]
    journal = {"journal": {"date": "2024-01-31", "reference": "JNL-1", "journal_lines": lines}}
    unbalanced = await client.post("/v3.1/journals", headers=headers, json=journal)
    assert unbalanced.status_code == 422
    assert unbalanced.json()[0]["$dataCode"] == "RecordInvalid"

    lines[1]["credit"] = "100.00"
    balanced = await client.post("/v3.1/journals", headers=headers, json=journal)
    assert balanced.status_code == 201
    assert balanced.json()["total"] == "100.0"
    assert [ln["credit"] for ln in balanced.json()["journal_lines"]] == ["0.0", "100.0"]
    assert len(sim.state("journals")) == 1

    missing = await client.post("/v3.1/journals", headers=headers, json={"journal": {"journal_lines": [{}]}})
    assert {e["$source"] for e in missing.json()} >= {"date", "reference", "journal_lines.debit"}


# ------------------------------------------------------------------------------------------- idempotency


async def test_idempotency_replay_mismatch_and_errors_not_cached(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim)
    key = "c3a8adaa26daf36e02f3c672b69e3323"
    body = invoice_body(sim, idempotency_id=key)
    first = await client.post("/v3.1/sales_invoices", headers=headers, json=body)
    again = await client.post("/v3.1/sales_invoices", headers=headers, json=body)
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert len(sim.state("sales_invoices")) == 1

    changed = invoice_body(sim, idempotency_id=key, reference="OTHER")
    replayed = await client.post("/v3.1/sales_invoices", headers=headers, json=changed)
    assert replayed.content == first.content
    sim.update_config(idempotency_body_mismatch="reject")
    assert (await client.post("/v3.1/sales_invoices", headers=headers, json=changed)).status_code == 422

    as_contact = {"contact": {"idempotency_id": key, "name": "Other", "contact_type_ids": ["CUSTOMER"]}}
    mismatch = await client.post("/v3.1/contacts", headers=headers, json=as_contact)
    assert mismatch.status_code == 422
    assert mismatch.json() == [
        {
            "$severity": "error",
            "$dataCode": "IdempotencyResourceMismatch",
            "$message": "Entity type mismatch",
            "$source": "",
        }
    ]

    fresh = "0" * 31 + "1"
    bad = invoice_body(sim, idempotency_id=fresh, contact_id=vendor_id(sim))
    assert (await client.post("/v3.1/sales_invoices", headers=headers, json=bad)).status_code == 422
    good = await client.post(
        "/v3.1/sales_invoices", headers=headers, json=invoice_body(sim, idempotency_id=fresh)
    )
    assert good.status_code == 201
    assert len(sim.state("sales_invoices")) == 2

    sim.advance_clock(7 * 86400 + 1)
    expired = await client.post("/v3.1/sales_invoices", headers=bearer(sim), json=body)
    assert expired.status_code == 201
    assert expired.json()["id"] != first.json()["id"]


# ------------------------------------------------------------------------------------------- faults


async def test_status_faults_with_and_without_retry_after_execute_nothing(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim)
    sim.faults.add(Fault("POST /v3.1/sales_invoices", "status", status=429, retry_after=7))
    await client.post(
        "/_sim/faults", json={"match": "POST /v3.1/sales_invoices", "kind": "status", "status": 429}
    )
    with_hint = await client.post("/v3.1/sales_invoices", headers=headers, json=invoice_body(sim))
    assert with_hint.status_code == 429
    assert with_hint.headers["retry-after"] == "7"
    assert with_hint.json()[0]["$severity"] == "error"
    without_hint = await client.post("/v3.1/sales_invoices", headers=headers, json=invoice_body(sim))
    assert without_hint.status_code == 429
    assert "retry-after" not in without_hint.headers
    assert sim.state("sales_invoices") == []

    sim.faults.add(Fault("GET /v3.1/contacts/*", "status", status=503))
    down = await client.get(f"/v3.1/contacts/{customer_id(sim)}", headers=headers)
    assert down.status_code == 503
    assert (await client.get(f"/v3.1/contacts/{customer_id(sim)}", headers=headers)).status_code == 200

    counters = (await client.get("/_sim/counters")).json()["calls"]
    assert counters["POST /v3.1/sales_invoices"] == 2
    assert counters["GET /v3.1/contacts/{key}"] == 2


async def test_status_after_commit_writes_the_record(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    headers = bearer(sim)
    sim.faults.add(Fault("POST /v3.1/sales_invoices", "status_after_commit", status=500))
    body = invoice_body(sim, idempotency_id="ab" * 16)
    failed = await client.post("/v3.1/sales_invoices", headers=headers, json=body)
    assert failed.status_code == 500
    assert failed.json()[0]["$dataCode"] == "UnexpectedError"
    assert [i["reference"] for i in sim.state("sales_invoices")] == ["PO-1001"]
    retried = await client.post("/v3.1/sales_invoices", headers=headers, json=body)
    assert retried.status_code == 201
    assert len(sim.state("sales_invoices")) == 1


async def test_drop_after_commit_under_asgi_transport(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    sim.faults.add(Fault("DELETE /v3.1/sales_invoices/{key}", "drop_after_commit"))
    headers = bearer(sim)
    invoice = (await client.post("/v3.1/sales_invoices", headers=headers, json=invoice_body(sim))).json()
    with pytest.raises(httpx.RemoteProtocolError):
        await client.delete(f"/v3.1/sales_invoices/{invoice['id']}?void_reason=Oops", headers=headers)
    assert sim.state("sales_invoices")[0]["status"]["id"] == "VOID"


async def test_delay_fault_and_token_fault(sim: SageAccountingSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.add(Fault("GET /v3.1/user", "delay", delay=0.2))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.get("/v3.1/user", headers=bearer(sim)), 0.05)
    sim.faults.add(Fault("POST /token", "status", status=503))
    down = await refresh(client, sim.issue_tokens()["refresh_token"])
    assert down.status_code == 503
    assert down.json()["error"] == "temporarily_unavailable"


async def test_rate_limits_concurrency_cap_and_daily_quota(
    sim: SageAccountingSimulator, client: httpx.AsyncClient
) -> None:
    sim.update_config(max_concurrent_requests=2, latency=0.15)
    headers = bearer(sim)
    responses = await asyncio.gather(*(client.get("/v3.1/tax_rates", headers=headers) for _ in range(5)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()[0]["$dataCode"] == "TooManyRequests"
    assert sim.faults.max_inflight > 2  # the simulator saw the client exceed the cap

    sim.update_config(max_concurrent_requests=150, latency=0.0, daily_quota=4)
    results = [(await client.get("/v3.1/tax_rates", headers=headers)).status_code for _ in range(3)]
    assert results == [200, 200, 429]


# ------------------------------------------------------------------------------------------- real server


def test_drop_after_commit_under_uvicorn_is_a_protocol_error() -> None:
    sim = SageAccountingSimulator()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(sim, lifespan="off", http="h11", ws="none", log_config=None, log_level="critical")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        sim.faults.add(Fault("POST /v3.1/sales_invoices", "drop_after_commit"))
        body = invoice_body(sim, idempotency_id="cd" * 16)
        headers = bearer(sim)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                http.post("/v3.1/sales_invoices", headers=headers, json=body)
            assert len(sim.state("sales_invoices")) == 1
            retried = http.post("/v3.1/sales_invoices", headers=headers, json=body)
            assert retried.status_code == 201
            assert retried.json()["id"] == sim.state("sales_invoices")[0]["id"]
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
    assert not thread.is_alive()
