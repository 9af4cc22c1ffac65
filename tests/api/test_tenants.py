from __future__ import annotations

from sqlalchemy import select

from models import ApiKey
from tests.conftest import ADMIN_TOKEN, Gateway, auth


async def test_admin_creates_tenant_and_key_is_shown_once(gateway: Gateway) -> None:
    key = await gateway.tenant("acme")
    assert key.startswith("lb_")
    r = await gateway.client.get("/v1/api-keys", headers=auth(key))
    assert r.status_code == 200
    listed = r.json()["data"]
    assert len(listed) == 1 and "api_key" not in listed[0] and key not in r.text
    async with gateway.app.state.lb.db.sessions() as session:
        rows = list((await session.execute(select(ApiKey))).scalars())
    assert all(key not in (row.key_hash, row.prefix, row.name) for row in rows)


async def test_admin_api_needs_admin_token(gateway: Gateway) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        r = await gateway.client.post("/v1/admin/tenants", json={"name": "x"}, headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "unauthenticated"


async def test_api_keys_create_list_revoke(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.post("/v1/api-keys", json={"name": "ci"}, headers=auth(key))
    assert r.status_code == 201
    second, second_id = r.json()["api_key"], r.json()["id"]
    assert (await gateway.client.get("/v1/api-keys", headers=auth(second))).status_code == 200
    r = await gateway.client.delete(f"/v1/api-keys/{second_id}", headers=auth(key))
    assert r.status_code == 204
    r = await gateway.client.get("/v1/api-keys", headers=auth(second))
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert (await gateway.client.get("/v1/api-keys", headers=auth(key))).status_code == 200


async def test_wrong_missing_and_malformed_keys_are_401(gateway: Gateway) -> None:
    key = await gateway.tenant()
    for headers in (
        {},
        {"Authorization": "Bearer lb_nope"},
        {"Authorization": key},
        {"Authorization": f"Bearer {key}x"},
        {"Authorization": "Bearer " + "lb_" + "a" * 500},
    ):
        r = await gateway.client.get("/v1/connections", headers=headers)
        assert r.status_code == 401, headers
        body = r.json()
        assert body["code"] == "unauthenticated" and body["request_id"] == r.headers["x-request-id"]


async def test_other_tenants_key_cannot_be_revoked(gateway: Gateway) -> None:
    a = await gateway.tenant("a")
    b = await gateway.tenant("b")
    a_keys = (await gateway.client.get("/v1/api-keys", headers=auth(a))).json()["data"]
    r = await gateway.client.delete(f"/v1/api-keys/{a_keys[0]['id']}", headers=auth(b))
    assert r.status_code == 404
    assert (await gateway.client.get("/v1/api-keys", headers=auth(a))).status_code == 200
