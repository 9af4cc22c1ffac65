from __future__ import annotations

from tests.conftest import Gateway, auth


async def test_sage_connect_and_list_contacts(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = await gateway.sage_connection(key)
    assert conn["status"] == "active", conn
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn["id"]))
    assert r.status_code == 200, r.text
    assert r.json()["data"]
    assert r.headers["x-request-id"].startswith("req_")
