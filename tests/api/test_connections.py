from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select, update

from models import Connection, Credential, OAuthState
from tests.conftest import GATEWAY, Gateway, auth


async def _count(gateway: Gateway, model: type, **where: str) -> int:
    async with gateway.app.state.lb.db.sessions() as session:
        stmt = select(func.count()).select_from(model)
        for key, value in where.items():
            stmt = stmt.where(getattr(model, key) == value)
        return int((await session.execute(stmt)).scalar_one())


async def test_providers_lists_capabilities(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.get("/v1/providers", headers=auth(key))
    assert r.status_code == 200
    providers = {p["name"]: p for p in r.json()["data"]}
    assert set(providers) == {"sage_accounting", "sage_intacct"}
    resources = {c["resource"]: c for c in providers["sage_accounting"]["capabilities"]}
    assert (
        "create" in resources["invoices"]["operations"]
        and "updated_since" in resources["contacts"]["filters"]
    )
    assert (
        providers["sage_intacct"]["credentials_schema"]["properties"]["user_password"]["format"] == "password"
    )


async def test_sage_connect_flow_with_pkce_and_single_business(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.post("/v1/connections", json={"provider": "sage_accounting"}, headers=auth(key))
    assert r.status_code == 201
    pending = r.json()
    assert pending["status"] == "pending_authorization"
    query = parse_qs(urlsplit(pending["authorization_url"]).query)
    assert query["redirect_uri"] == [f"{GATEWAY}/v1/oauth/callback"]
    assert query["code_challenge_method"] == ["S256"] and query["state"][0] and query["filter"] == ["apiv3.1"]
    approve = await gateway.upstream.get(pending["authorization_url"])
    callback = await gateway.client.get(approve.headers["location"].removeprefix(GATEWAY))
    assert callback.status_code == 200, callback.text
    conn = callback.json()
    assert conn["status"] == "active"
    assert conn["settings"]["business_id"] == gateway.sims.sage.lead_business_id("demo")
    assert conn["health"]["credentials_expire_at"] is not None
    assert "token" not in callback.text.replace("refresh_token_expires", "")
    async with gateway.app.state.lb.db.sessions() as session:
        rows = list(
            (
                await session.execute(select(Credential).where(Credential.connection_id == conn["id"]))
            ).scalars()
        )
    assert {r.field for r in rows} >= {"access_token", "refresh_token"}
    assert all(r.ciphertext.startswith("v1.k1.") for r in rows)

    # The state is single-use: replaying the callback is refused and changes nothing.
    before = await gateway.client.get(f"/v1/connections/{conn['id']}", headers=auth(key))
    replay = await gateway.client.get(approve.headers["location"].removeprefix(GATEWAY))
    assert replay.status_code == 400 and replay.json()["code"] == "invalid_state"
    after = await gateway.client.get(f"/v1/connections/{conn['id']}", headers=auth(key))
    assert before.json() == after.json()


async def test_unknown_and_expired_state_are_refused(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.get("/v1/oauth/callback", params={"state": "nope", "code": "GB/x"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_state"
    r = await gateway.client.post("/v1/connections", json={"provider": "sage_accounting"}, headers=auth(key))
    conn_id = r.json()["id"]
    approve = await gateway.upstream.get(r.json()["authorization_url"])
    async with gateway.app.state.lb.db.session() as session:
        await session.execute(
            update(OAuthState).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    r = await gateway.client.get(approve.headers["location"].removeprefix(GATEWAY))
    assert r.status_code == 400
    conn = await gateway.client.get(f"/v1/connections/{conn_id}", headers=auth(key))
    assert conn.json()["status"] == "pending_authorization"
    assert await _count(gateway, Credential, connection_id=conn_id) == 0
    assert gateway.sims.sage.faults.calls["POST /token"] == 0


async def test_several_businesses_wait_for_a_pick(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = await gateway.sage_connection(key, user="multi")
    assert conn["status"] == "business_selection_required"
    businesses = [b["id"] for b in conn["settings"]["businesses"]]
    assert len(businesses) == 2
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn["id"]))
    assert r.status_code == 409 and r.json()["code"] == "business_selection_required"
    r = await gateway.client.patch(
        f"/v1/connections/{conn['id']}", json={"business_id": "not-mine"}, headers=auth(key)
    )
    assert r.status_code == 422
    r = await gateway.client.patch(
        f"/v1/connections/{conn['id']}", json={"business_id": businesses[1]}, headers=auth(key)
    )
    assert r.status_code == 200 and r.json()["status"] == "active"
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn["id"]))
    assert r.status_code == 200, r.text


async def test_redirect_url_gets_the_user_back(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.post(
        "/v1/connections",
        json={"provider": "sage_accounting", "redirect_url": "https://app.example.com/done?x=1"},
        headers=auth(key),
    )
    approve = await gateway.upstream.get(r.json()["authorization_url"])
    callback = await gateway.client.get(approve.headers["location"].removeprefix(GATEWAY))
    assert callback.status_code == 302
    target = urlsplit(callback.headers["location"])
    assert target.netloc == "app.example.com"
    assert parse_qs(target.query) == {"x": ["1"], "connection_id": [r.json()["id"]], "status": ["active"]}


async def test_intacct_bad_credentials_store_nothing(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.post(
        "/v1/connections",
        json={
            "provider": "sage_intacct",
            "credentials": {
                "company_id": "DEMO-CO",
                "user_id": "demo-user",
                "user_password": "wrong-password",
            },
        },
        headers=auth(key),
    )
    assert r.status_code == 422, r.text
    assert "wrong-password" not in r.text
    assert await _count(gateway, Connection) == 0 and await _count(gateway, Credential) == 0
    r = await gateway.client.post(
        "/v1/connections",
        json={"provider": "sage_intacct", "credentials": {"company_id": "DEMO-CO"}},
        headers=auth(key),
    )
    assert r.status_code == 422 and {e["field"] for e in r.json()["errors"]} >= {"credentials.user_id"}


async def test_intacct_connection_never_returns_secrets(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = await gateway.intacct_connection(key)
    assert conn["status"] == "active" and conn["settings"]["company_id"] == "DEMO-CO"
    for r in (
        await gateway.client.get(f"/v1/connections/{conn['id']}", headers=auth(key)),
        await gateway.client.get("/v1/connections", headers=auth(key)),
    ):
        assert "demo-password" not in r.text and "session" not in r.text.lower()


async def test_check_updates_health(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = await gateway.sage_connection(key)
    r = await gateway.client.post(f"/v1/connections/{conn['id']}/check", headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert r.json()["connection"]["health"]["last_success_at"] is not None


async def test_delete_revokes_upstream_and_erases_credentials(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = await gateway.sage_connection(key)
    r = await gateway.client.delete(f"/v1/connections/{conn['id']}", headers=auth(key))
    assert r.status_code == 204
    assert gateway.sims.sage.faults.calls["POST /revoke"] == 1
    assert await _count(gateway, Credential, connection_id=conn["id"]) == 0
    shown = await gateway.client.get(f"/v1/connections/{conn['id']}", headers=auth(key))
    assert shown.json()["status"] == "revoked"
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn["id"]))
    assert r.status_code == 409 and r.json()["code"] == "connection_revoked"


async def test_connections_list_pages(gateway: Gateway) -> None:
    key = await gateway.tenant()
    ids = set()
    for _ in range(3):
        r = await gateway.client.post(
            "/v1/connections", json={"provider": "sage_accounting"}, headers=auth(key)
        )
        ids.add(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"page_size": 2, **({"cursor": cursor} if cursor else {})}
        page = (await gateway.client.get("/v1/connections", params=params, headers=auth(key))).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids)
