from __future__ import annotations

from fastapi import APIRouter

from tests.conftest import Gateway, auth


async def test_malformed_json_is_422_problem(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.post(
        "/v1/api-keys", content=b"{not json", headers={**auth(key), "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "validation_error" and body["status"] == 422 and body["request_id"]


async def test_unknown_fields_and_wrong_types_are_refused(gateway: Gateway) -> None:
    key = await gateway.tenant()
    r = await gateway.client.post("/v1/api-keys", json={"name": "x", "admin": True}, headers=auth(key))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "admin"
    r = await gateway.client.post("/v1/connections", json={"provider": 5}, headers=auth(key))
    assert r.status_code == 422
    r = await gateway.client.post("/v1/connections", json={"provider": "nope"}, headers=auth(key))
    assert r.status_code == 422 and "nope" in r.json()["detail"]
    listed = (await gateway.client.get("/v1/api-keys", headers=auth(key))).json()["data"]
    assert len(listed) == 1


async def test_oversized_body_is_413_and_changes_nothing(gateway: Gateway) -> None:
    key = await gateway.tenant()
    big = b'{"name": "' + b"x" * (gateway.settings.max_body_bytes + 10) + b'"}'
    r = await gateway.client.post(
        "/v1/api-keys", content=big, headers={**auth(key), "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"
    listed = (await gateway.client.get("/v1/api-keys", headers=auth(key))).json()["data"]
    assert len(listed) == 1


async def test_unknown_connection_is_404_problem(gateway: Gateway) -> None:
    key = await gateway.tenant()
    for cid in ("0" * 32, "x" * 200):
        r = await gateway.client.get("/v1/contacts", headers=auth(key, cid))
        assert r.status_code in (404, 422)
        assert r.headers["content-type"] == "application/problem+json"
    r = await gateway.client.get("/v1/contacts", headers=auth(key, "0" * 32))
    assert r.json()["code"] == "connection_not_found"


async def test_unexpected_error_is_500_without_trace(gateway: Gateway) -> None:
    router = APIRouter()

    @router.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret-internal-detail")

    gateway.app.include_router(router)
    r = await gateway.client.get("/v1/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == "internal_error" and body["request_id"] == r.headers["x-request-id"]
    assert "secret-internal-detail" not in r.text and "Traceback" not in r.text


async def test_every_response_has_a_request_id(gateway: Gateway) -> None:
    for path in ("/healthz", "/readyz", "/v1/connections", "/nope"):
        r = await gateway.client.get(path)
        assert r.headers["x-request-id"].startswith("req_"), path
    r = await gateway.client.get("/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
