"""The raw proxy (CONTRACT §8): passthrough on the simulators, and everything it must refuse before any
upstream call (reliability-notes §5.4 API7 SSRF, §5.5 XML hardening).

Hostile paths are sent as raw ASGI requests (httpx would normalize ``..`` away before the gateway saw it);
what the upstream received is recorded by hooks on the gateway's upstream client, so "zero upstream
calls" also covers requests no simulator route would have matched."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import uvicorn

from api.app import create_app, make_http_client
from api.proxy import safety
from api.ratelimit import build_governor
from tests.conftest import GATEWAY, UPSTREAM, Gateway, Sims, auth, gateway_settings


@dataclass
class Sent:
    method: str
    raw_path: bytes
    query: bytes
    headers: httpx.Headers
    body: bytes


@dataclass
class UpstreamRecorder:
    """Every request the gateway sent upstream, and every response it got (bodies included)."""

    requests: list[Sent] = field(default_factory=list)
    responses: list[httpx.Response] = field(default_factory=list)

    async def on_request(self, request: httpx.Request) -> None:
        self.requests.append(
            Sent(
                request.method,
                request.url.raw_path.split(b"?")[0],
                request.url.query,
                request.headers,
                request.content,
            )
        )

    async def on_response(self, response: httpx.Response) -> None:
        await response.aread()
        self.responses.append(response)


def record_upstream(gateway: Gateway) -> UpstreamRecorder:
    recorder = UpstreamRecorder()
    gateway.upstream.event_hooks = {"request": [recorder.on_request], "response": [recorder.on_response]}
    return recorder


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_call(
    gateway: Gateway,
    method: str,
    target: bytes,
    headers: dict[str, str] | list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    root_path: str = "",
) -> RawResponse:
    """One request handed to the gateway's ASGI app exactly as given: ``raw_path`` is the bytes after the
    method, and ``path`` is their percent-decoding (what uvicorn puts in the scope)."""
    raw_path, _, query = target.partition(b"?")
    header_list = (
        [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if isinstance(headers, dict)
        else headers
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1"), encoding="latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": [(b"host", b"gateway"), (b"content-length", str(len(body)).encode()), *header_list],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    status = 0
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.update({k.decode(): v.decode() for k, v in message["headers"]})
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await gateway.app(scope, receive, send)
    return RawResponse(status, out_headers, b"".join(chunks))


@dataclass
class Linked:
    """A tenant's API key and one of its connections."""

    key: str
    connection: dict[str, Any]
    business_id: str

    def headers(self, **extra: str) -> dict[str, str]:
        return auth(self.key, self.connection["id"], **extra)


@pytest.fixture
async def sage(gateway: Gateway) -> Linked:
    key = await gateway.tenant()
    conn = await gateway.sage_connection(key)
    assert conn["status"] == "active", conn
    return Linked(key, conn, gateway.sims.sage.lead_business_id())


@pytest.fixture
async def intacct(gateway: Gateway) -> Linked:
    assert gateway.sims.intacct is not None, (
        "the Sage Intacct simulator (sandbox.sage_intacct) is not importable"
    )
    key = await gateway.tenant("intacct-co")
    r = await gateway.client.post(
        "/v1/connections",
        json={
            "provider": "sage_intacct",
            "credentials": {
                "company_id": "DEMO-CO",
                "user_id": "demo-user",
                "user_password": "demo-password",
            },
            "rest": {"client_id": "sandbox-rest-client", "client_secret": "sandbox-rest-secret"},
        },
        headers=auth(key),
    )
    assert r.status_code == 201, r.text
    conn = r.json()
    assert conn["status"] == "active", conn
    return Linked(key, conn, "")


def sage_calls(gateway: Gateway) -> int:
    return sum(gateway.sims.sage.faults.calls.values())


def intacct_calls(gateway: Gateway) -> int:
    return sum(gateway.sims.intacct.faults.calls.values())


def assert_refused(
    response: RawResponse | httpx.Response, status: int = 400, code: str | None = None
) -> None:
    body = response.json()
    actual = response.status_code if isinstance(response, httpx.Response) else response.status
    assert actual == status, body
    assert response.headers["content-type"] == "application/problem+json"
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    assert body["request_id"].startswith("req_")


# --- passthrough on the simulators -----------------------------------------------------------------------


async def test_sage_get_passthrough(gateway: Gateway, sage: Linked) -> None:
    recorder = record_upstream(gateway)
    r = await gateway.client.get("/v1/proxy/contacts?items_per_page=5&page=1", headers=sage.headers())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert 0 < len(body["$items"]) <= 5
    assert body["$itemsPerPage"] == 5
    [sent] = recorder.requests
    assert sent.raw_path == b"/sage-accounting/v3.1/contacts"
    assert sent.query == b"items_per_page=5&page=1"
    assert sent.headers["x-business"] == sage.business_id
    [upstream] = recorder.responses
    assert r.content == upstream.content
    assert r.headers["upstream-request-id"] == upstream.headers["x_request_id"]
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in upstream.headers:  # only allowlisted upstream headers reach the caller
        if name not in ("content-type", "content-length", *safety.FORWARDED_RESPONSE_HEADERS):
            assert name not in r.headers, name
    head = await gateway.client.head("/v1/proxy/contacts?items_per_page=5", headers=sage.headers())
    assert head.status_code == 200
    assert head.content == b""
    for path in ("contact_types", "currencies", "bank_accounts", "businesses", "user"):  # no unified model
        other = await gateway.client.get(f"/v1/proxy/{path}", headers=sage.headers())
        assert other.status_code == 200, (path, other.text)
        assert other.json()


async def test_sage_post_creates_upstream(gateway: Gateway, sage: Linked) -> None:
    recorder = record_upstream(gateway)
    payload = {"contact": {"name": "Proxy Made Ltd", "contact_type_ids": ["CUSTOMER"], "reference": "PRX1"}}
    r = await gateway.client.post("/v1/proxy/contacts", json=payload, headers=sage.headers())
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "Proxy Made Ltd"
    [sent] = recorder.requests
    assert sent.method == "POST"
    assert json.loads(sent.body) == payload
    names = [c["name"] for c in gateway.sims.sage.state("contacts", sage.business_id)]
    assert names.count("Proxy Made Ltd") == 1
    fetched = await gateway.client.get(f"/v1/proxy/contacts/{created['id']}", headers=sage.headers())
    assert fetched.status_code == 200
    assert fetched.json()["id"] == created["id"]


async def test_idempotency_key_sends_a_proxy_write_once(gateway: Gateway, sage: Linked) -> None:
    recorder = record_upstream(gateway)
    payload = {"contact": {"name": "Once Only Ltd", "contact_type_ids": ["CUSTOMER"]}}
    headers = sage.headers(**{"Idempotency-Key": "proxy-key-1"})
    first = await gateway.client.post("/v1/proxy/contacts", json=payload, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = await gateway.client.post("/v1/proxy/contacts", json=payload, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["upstream-request-id"] == first.headers["upstream-request-id"]
    assert len(recorder.requests) == 1
    names = [c["name"] for c in gateway.sims.sage.state("contacts", sage.business_id)]
    assert names.count("Once Only Ltd") == 1
    other_body = {"contact": {"name": "Something Else", "contact_type_ids": ["CUSTOMER"]}}
    reused = await gateway.client.post("/v1/proxy/contacts", json=other_body, headers=headers)
    assert_refused(reused, 422, "idempotency_key_reused")
    other_path = await gateway.client.post("/v1/proxy/journals", json=payload, headers=headers)
    assert_refused(other_path, 422, "idempotency_key_reused")
    # An upstream refusal is an answer too: replayed, not re-sent.
    bad_headers = sage.headers(**{"Idempotency-Key": "proxy-key-2"})
    bad = await gateway.client.post("/v1/proxy/contacts", json={"contact": {}}, headers=bad_headers)
    assert bad.status_code == 422
    bad_again = await gateway.client.post("/v1/proxy/contacts", json={"contact": {}}, headers=bad_headers)
    assert bad_again.headers["idempotent-replayed"] == "true"
    assert bad_again.content == bad.content
    assert len(recorder.requests) == 2
    invalid = await gateway.client.post(
        "/v1/proxy/contacts", json=payload, headers=sage.headers(**{"Idempotency-Key": "x" * 256})
    )
    assert_refused(invalid, 400, "invalid_idempotency_key")
    assert len(recorder.requests) == 2


async def test_upstream_statuses_pass_through_and_redirects_are_not_followed(
    gateway: Gateway, sage: Linked
) -> None:
    r = await gateway.client.get("/v1/proxy/contacts/no-such-contact", headers=sage.headers())
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json(), list), "the upstream's own error array, not a gateway problem"
    bad = await gateway.client.post(
        "/v1/proxy/contacts", json={"contact": {"name": "No type"}}, headers=sage.headers()
    )
    assert bad.status_code == 422
    assert bad.json()[0]["$dataCode"]
    recorder = record_upstream(gateway)
    # The simulator (Starlette) answers a trailing slash with a redirect to the path without it.
    r = await gateway.client.get("/v1/proxy/contacts/", headers=sage.headers())
    assert r.status_code in (301, 302, 307, 308), r.text
    assert "location" not in r.headers
    assert len(recorder.requests) == 1
    assert recorder.requests[0].raw_path == b"/sage-accounting/v3.1/contacts/"


def test_shared_client_never_follows_redirects() -> None:
    assert make_http_client(gateway_settings("sqlite://")).follow_redirects is False


async def test_intacct_xml_round_trip(gateway: Gateway, intacct: Linked) -> None:
    recorder = record_upstream(gateway)
    functions = (
        b'<function controlid="q1"><readByQuery><object>CUSTOMER</object><fields>*</fields>'
        b"<query></query><pagesize>5</pagesize></readByQuery></function>"
    )
    r = await gateway.client.post(
        "/v1/proxy/xml", content=functions, headers=intacct.headers(**{"Content-Type": "application/xml"})
    )
    assert r.status_code == 200, r.text
    assert "xml" in r.headers["content-type"]
    assert b"<status>success</status>" in r.content
    assert b'listtype="customer"' in r.content
    upstream = recorder.responses[-1]
    assert r.content == upstream.content, "the upstream XML comes back unchanged"
    envelope = recorder.requests[-1].body
    assert b"<sessionid>" in envelope and b"<readByQuery>" in envelope
    assert r.headers.get("upstream-request-id")
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<content>'
        b'<function controlid="a"><readByQuery><object>CUSTOMER</object><fields>CUSTOMERID</fields>'
        b"<query></query><pagesize>1</pagesize></readByQuery></function>"
        b'<function controlid="b"><readByQuery><object>GLACCOUNT</object><fields>ACCOUNTNO</fields>'
        b"<query></query><pagesize>1</pagesize></readByQuery></function></content>"
    )
    r = await gateway.client.post("/v1/proxy/xml", content=body, headers=intacct.headers())
    assert r.status_code == 200, r.text
    assert r.content.count(b"<result>") == 2
    envelope = recorder.requests[-1].body
    assert envelope.count(b"<function ") == 2
    sent = len(recorder.requests)
    keyed = intacct.headers(**{"Idempotency-Key": "xml-key-1"})
    once = await gateway.client.post("/v1/proxy/xml", content=body, headers=keyed)
    twice = await gateway.client.post("/v1/proxy/xml", content=body, headers=keyed)
    assert once.status_code == twice.status_code == 200
    assert twice.headers["idempotent-replayed"] == "true"
    assert twice.content == once.content
    assert len(recorder.requests) == sent + 1


async def test_intacct_rest_get(gateway: Gateway, intacct: Linked) -> None:
    recorder = record_upstream(gateway)
    r = await gateway.client.get(
        "/v1/proxy/rest/objects/accounts-receivable/customer", headers=intacct.headers()
    )
    assert r.status_code == 200, r.text
    assert r.json()["ia::result"]
    sent = recorder.requests[-1]
    assert sent.raw_path == b"/sage-intacct/ia/api/v1/objects/accounts-receivable/customer"
    assert sent.headers["authorization"].startswith("Bearer ")
    assert intacct.key not in sent.headers["authorization"]


# --- routes and providers --------------------------------------------------------------------------------


async def test_wrong_route_or_connection_never_reaches_the_upstream(gateway: Gateway, sage: Linked) -> None:
    recorder = record_upstream(gateway)
    r = await gateway.client.post("/v1/proxy/xml", content=b"<function/>", headers=sage.headers())
    assert_refused(r, 404, "proxy_route_not_found")
    r = await gateway.client.get("/v1/proxy/rest/objects/x", headers=sage.headers())
    assert_refused(r, 404, "proxy_route_not_found")
    other = await gateway.tenant("other")
    r = await gateway.client.get("/v1/proxy/contacts", headers=auth(other, sage.connection["id"]))
    assert_refused(r, 404, "connection_not_found")
    r = await gateway.client.get("/v1/proxy/contacts", headers={"X-Connection-Id": sage.connection["id"]})
    assert_refused(r, 401, "unauthenticated")
    r = await gateway.client.get("/v1/proxy/contacts", headers=auth(sage.key))
    assert r.status_code in (404, 422), r.text
    assert recorder.requests == []


async def test_intacct_generic_route_and_reserved_rest_paths(gateway: Gateway, intacct: Linked) -> None:
    recorder = record_upstream(gateway)
    r = await gateway.client.get("/v1/proxy/contacts", headers=intacct.headers())
    assert_refused(r, 404, "proxy_route_not_found")
    r = await gateway.client.post(
        "/v1/proxy/rest/oauth2/token", content=b"grant_type=x", headers=intacct.headers()
    )
    assert_refused(r, 400, "invalid_proxy_path")
    for target in (
        b"/v1/proxy/rest/..%2fxml",
        b"/v1/proxy/rest//evil/x",
        b"/v1/proxy/rest/../../xml",
        b"/v1/proxy/rest/oauth%32/token",
    ):
        raw = await raw_call(gateway, "GET", target, intacct.headers())
        assert_refused(raw, 400, "invalid_proxy_path")
    assert recorder.requests == []


@dataclass(frozen=True)
class Case:
    value: bytes
    id: str


@dataclass(frozen=True)
class Smuggled:
    name: str
    value: str


# --- SSRF and path tricks: refused before any upstream call ------------------------------------------------

REFUSED_TARGETS = [
    Case(b"/v1/proxy/http://evil.example/x", id="absolute-http"),
    Case(b"/v1/proxy/https://evil.example/contacts", id="absolute-https"),
    Case(b"/v1/proxy/http:%2f%2fevil.example/x", id="scheme-encoded-slashes"),
    Case(b"/v1/proxy/file:///etc/passwd", id="file-scheme"),
    Case(b"/v1/proxy/file:%2f%2f%2fetc%2fpasswd", id="file-scheme-encoded"),
    Case(b"/v1/proxy//evil.example/contacts", id="scheme-relative"),
    Case(b"/v1/proxy///evil.example", id="triple-slash"),
    Case(b"/v1/proxy/contacts//x", id="empty-segment"),
    Case(b"/v1/proxy/", id="empty-path"),
    Case(b"/v1/proxy/../token", id="dotdot"),
    Case(b"/v1/proxy/contacts/../../../token", id="dotdot-nested"),
    Case(b"/v1/proxy/./contacts", id="dot"),
    Case(b"/v1/proxy/..;/token", id="dotdot-semicolon"),
    Case(b"/v1/proxy/%2e%2e/token", id="dotdot-encoded"),
    Case(b"/v1/proxy/%2E%2E/%2E%2E/revoke", id="dotdot-encoded-upper"),
    Case(b"/v1/proxy/.%2e/token", id="dotdot-half-encoded"),
    Case(b"/v1/proxy/%252e%252e/token", id="dotdot-double-encoded"),
    Case(b"/v1/proxy/contacts%2f..%2f..%2ftoken", id="encoded-slash-traversal"),
    Case(b"/v1/proxy/contacts%2Fx", id="encoded-slash"),
    Case(b"/v1/proxy/contacts%252fx", id="double-encoded-slash"),
    Case(b"/v1/proxy/..%5c..%5ctoken", id="encoded-backslash"),
    Case(b"/v1/proxy/contacts\\..\\token", id="backslash"),
    Case(b"/v1/proxy/user@evil.example/contacts", id="userinfo-at"),
    Case(b"/v1/proxy/contacts%40evil.example", id="encoded-at"),
    Case(b"/v1/proxy/evil.example:443/contacts", id="host-port-colon"),
    Case(b"/v1/proxy/contacts%0d%0aX-Injected:%20yes", id="crlf-encoded"),
    Case(b"/v1/proxy/contacts\r\nHost: evil.example", id="crlf-raw"),
    Case(b"/v1/proxy/contacts%0aHost:evil", id="lf-encoded"),
    Case(b"/v1/proxy/contacts%00", id="nul-encoded"),
    Case(b"/v1/proxy/contacts\x00x", id="nul-raw"),
    Case(b"/v1/proxy/contacts%09x", id="tab-encoded"),
    Case(b"/v1/proxy/contacts\x7fx", id="del-raw"),
    Case(b"/v1/proxy/%EF%BC%8E%EF%BC%8E/token", id="fullwidth-dots-encoded"),
    Case("/v1/proxy/\uff0e\uff0e/token".encode(), id="fullwidth-dots-raw"),
    Case(b"/v1/proxy/%E3%80%82%E3%80%82/token", id="ideographic-dots"),
    Case(b"/v1/proxy/%E2%80%A4%E2%80%A4/token", id="one-dot-leaders"),
    Case(b"/v1/proxy/contacts%", id="truncated-escape"),
    Case(b"/v1/proxy/contacts%zz", id="bad-escape"),
    Case(b"/v1/proxy/contacts#fragment", id="raw-hash"),
    Case(b"/v1/proxy/contacts?x=%0d%0aHost:%20evil", id="query-crlf"),
    Case(b"/v1/proxy/contacts?x=a b", id="query-space"),
    Case(b"/v1/proxy/contacts?x=%00", id="query-nul"),
    Case(b"/v1/%70roxy/%2e%2e/token", id="encoded-route-prefix"),
    Case(b"/v1/proxy/%63ontacts", id="encoded-unreserved"),
    Case(b"/v1/proxy/%2e%2e/%2e%2e/v1/admin/tenants", id="back-into-the-gateway"),
]


async def test_hostile_targets_are_refused_without_upstream_calls(gateway: Gateway, sage: Linked) -> None:
    served = await raw_call(gateway, "GET", b"/lb/v1/proxy/contacts", sage.headers(), root_path="/lb")
    assert served.status == 200, served.body
    recorder = record_upstream(gateway)
    before = sage_calls(gateway)
    failures: list[str] = []
    for case in REFUSED_TARGETS:
        for method in ("GET", "POST"):
            r = await raw_call(
                gateway, method, case.value, sage.headers(**{"Content-Type": "application/json"}), b"{}"
            )
            body = r.json()
            if r.status != 400 or r.headers["content-type"] != "application/problem+json":
                failures.append(f"{case.id} {method}: {r.status} {body}")
            elif body["code"] not in ("invalid_proxy_path", "invalid_proxy_query"):
                failures.append(f"{case.id} {method}: code {body['code']}")
            elif "\r" in body["detail"] or "\n" in body["detail"] or "\x00" in body["detail"]:
                failures.append(f"{case.id} {method}: control characters echoed in {body['detail']!r}")
    # Behind a path-prefixing reverse proxy (uvicorn --root-path puts the prefix in path and raw_path).
    for target in (b"/lb/v1/proxy/%2e%2e/token", b"/lb/v1/proxy//evil.example/x"):
        r = await raw_call(gateway, "GET", target, sage.headers(), root_path="/lb")
        if r.status != 400:
            failures.append(f"root path {target!r}: {r.status} {r.body!r}")
    assert not failures, "\n".join(failures)
    assert len(REFUSED_TARGETS) >= 30
    assert recorder.requests == []
    assert sage_calls(gateway) == before


def test_path_rules_accept_ordinary_paths() -> None:
    assert safety.vet_path(b"contacts", "contacts") == "contacts"
    assert safety.vet_path(b"contacts/abc123/", "contacts/abc123/") == "contacts/abc123/"
    assert safety.vet_path(b"objects/accounts-receivable/customer", "objects/accounts-receivable/customer")
    assert safety.vet_path(b"files/a%20b.pdf", "files/a b.pdf") == "files/a%20b.pdf"
    assert safety.vet_query(b"search=Caf%C3%A9&items_per_page=5") == "search=Caf%C3%A9&items_per_page=5"


# --- header smuggling: never forwarded ----------------------------------------------------------------------

DROPPED_HEADERS = [
    Smuggled("Cookie", "session=stolen"),
    Smuggled("X-Forwarded-Host", "evil.example"),
    Smuggled("X-Forwarded-For", "169.254.169.254"),
    Smuggled("X-Forwarded-Proto", "http"),
    Smuggled("Forwarded", "host=evil.example"),
    Smuggled("Transfer-Encoding", "chunked"),
    Smuggled("Connection", "close, X-Business"),
    Smuggled("Keep-Alive", "timeout=5"),
    Smuggled("TE", "trailers"),
    Smuggled("Trailer", "X-Business"),
    Smuggled("Upgrade", "websocket"),
    Smuggled("Proxy-Authorization", "Basic ZXZpbA=="),
    Smuggled("X-HTTP-Method-Override", "DELETE"),
    Smuggled("X-Original-URL", "/token"),
]


async def test_smuggled_headers_are_not_forwarded(gateway: Gateway, sage: Linked) -> None:
    failures: list[str] = []
    for case in DROPPED_HEADERS:
        recorder = record_upstream(gateway)
        r = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers(**{case.name: case.value}))
        if r.status_code != 200:
            failures.append(f"{case.name}: {r.status_code} {r.text}")
            continue
        [sent] = recorder.requests
        if case.name.lower() in sent.headers or case.value in " ".join(sent.headers.values()):
            failures.append(f"{case.name} reached the upstream: {dict(sent.headers)}")
    assert not failures, "\n".join(failures)


def test_gateway_header_allowlist_on_its_own() -> None:
    """The gateway's filter, independent of the connectors' own (which would hide a gap end to end)."""
    hostile = {case.name.lower(): case.value for case in DROPPED_HEADERS}
    allowed = {"accept": "application/json", "content-type": "application/json", "if-match": '"e1"'}
    extra = {"authorization": "Bearer lb_x", "host": "evil", "x-connection-id": "c1", "x-business": "b1"}
    assert safety.forwarded_headers({**hostile, **extra, **allowed}) == allowed
    assert safety.forwarded_headers({"accept": "a\r\nx-injected: 1"}) == {}
    upstream = {"Set-Cookie": "s=1", "ETag": '"e2"', "Server": "sage", "X_Request_Id": "r1", "Link": "<x>"}
    assert safety.response_headers(upstream) == {"etag": '"e2"', "link": "<x>"}


async def test_auth_host_and_business_are_the_gateways(gateway: Gateway, sage: Linked) -> None:
    recorder = record_upstream(gateway)
    other_business = "b" * 32
    r = await gateway.client.get(
        "/v1/proxy/contacts",
        headers=sage.headers(
            **{
                "Host": "evil.example",
                "X-Business": other_business,
                "Accept": "application/json",
                "If-None-Match": '"abc"',
                "Accept-Language": "en-GB",
            }
        ),
    )
    assert r.status_code == 200, r.text
    [sent] = recorder.requests
    assert sent.headers["authorization"].startswith("Bearer ")
    assert sage.key not in sent.headers["authorization"], "the caller's API key never reaches the upstream"
    assert sent.headers["host"] == "upstream"
    assert sent.headers["x-business"] == sage.business_id
    assert "x-connection-id" not in sent.headers
    assert sent.headers["if-none-match"] == '"abc"'
    assert sent.headers["accept-language"] == "en-GB"


# --- Intacct XML bodies: refused before any upstream call --------------------------------------------------

_READ = b"<readByQuery><object>CUSTOMER</object><fields>*</fields><query></query></readByQuery>"

HOSTILE_XML = [
    Case(
        b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<function controlid="x"><readByQuery><object>&xxe;</object></readByQuery></function>',
        id="xxe-file",
    ),
    Case(
        b'<!DOCTYPE f [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/x">]><function controlid="x">&xxe;</function>',
        id="xxe-http",
    ),
    Case(
        b'<!DOCTYPE f SYSTEM "http://127.0.0.1:9/evil.dtd"><function controlid="x">' + _READ + b"</function>",
        id="external-dtd",
    ),
    Case(
        b'<!DOCTYPE f [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]><function/>',
        id="parameter-entity",
    ),
    Case(
        b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        b'<function controlid="x"><readByQuery><object>&lol3;</object></readByQuery></function>',
        id="billion-laughs",
    ),
    Case(
        b'<function controlid="x"><readByQuery><object>&xxe;</object></readByQuery></function>',
        id="undefined-entity",
    ),
    Case(b'<!doctype function><function controlid="x">' + _READ + b"</function>", id="doctype-lowercase"),
    Case(
        b'<function controlid="x"><authentication><sessionid>stolen</sessionid></authentication>'
        + _READ
        + b"</function>",
        id="authentication",
    ),
    Case(b'<function controlid="x"><control><senderid>x</senderid></control></function>', id="control"),
    Case(b'<function controlid="x"><login><userid>a</userid></login></function>', id="login"),
    Case(b'<function controlid="x"><sessionid>s</sessionid></function>', id="sessionid"),
    Case(b'<function controlid="x"><password>p</password></function>', id="password"),
    Case(b'<function controlid="x"><operation>' + _READ + b"</operation></function>", id="operation"),
    Case(
        b"<request><control><senderid>s</senderid></control><operation><authentication><sessionid>x"
        b'</sessionid></authentication><content><function controlid="x">'
        + _READ
        + b"</function></content></operation></request>",
        id="whole-envelope",
    ),
    Case(b'<content><function controlid="x"><Authentication/></function></content>', id="content-auth"),
    Case(b"<readByQuery><object>CUSTOMER</object></readByQuery>", id="not-a-function"),
    Case(b'<function controlid="x">' + _READ + b"</function>trailing text", id="text-outside"),
    Case(b'<function controlid="x">' + _READ + b"</function><other/>", id="mixed-top-level"),
    Case(b"<content></content><content></content>", id="two-contents"),
    Case(b"<content></content>", id="empty-content"),
    Case(b"", id="empty"),
    Case(b'<function controlid="x">' + _READ, id="not-well-formed"),
    Case(b'</lb-proxy-fragment><function controlid="x"/><lb-proxy-fragment>', id="wrapper-escape"),
    Case(b'<f:function xmlns:f="urn:x" controlid="x">' + _READ + b"</f:function>", id="namespaced"),
    Case(
        b'<?xml version="1.0" encoding="ISO-8859-1"?><function controlid="x">' + _READ + b"</function>",
        id="non-utf8-declared",
    ),
    Case(b'<function controlid="\xff">' + _READ + b"</function>", id="invalid-utf8"),
]


async def test_hostile_xml_is_refused_without_upstream_calls(gateway: Gateway, intacct: Linked) -> None:
    recorder = record_upstream(gateway)
    before = intacct_calls(gateway)
    failures: list[str] = []
    for case in HOSTILE_XML:
        r = await gateway.client.post(
            "/v1/proxy/xml",
            content=case.value,
            headers=intacct.headers(**{"Content-Type": "application/xml"}),
        )
        if r.status_code != 400 or r.json().get("code") != "invalid_proxy_body" or b"root:" in r.content:
            failures.append(f"{case.id}: {r.status_code} {r.text}")
    assert not failures, "\n".join(failures)
    assert recorder.requests == []
    assert intacct_calls(gateway) == before


def test_xml_is_reserialized_canonically() -> None:
    body = (
        b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n <!-- note --> <content>\n'
        b'<function controlid="a"><?pi x?><get object="CUSTOMER" key="1"/></function>\n'
        b"<function controlid=\"b\"><readByQuery><object>CUSTOMER</object><query>NAME = 'Caf\xc3\xa9 &amp; Co'"
        b"</query></readByQuery></function></content>"
    )
    assert safety.vet_functions(body) == (
        b'<function controlid="a"><get object="CUSTOMER" key="1"/></function>'
        b"<function controlid=\"b\"><readByQuery><object>CUSTOMER</object><query>NAME = 'Caf\xc3\xa9 &amp; Co'"
        b"</query></readByQuery></function>"
    )


# --- limits ----------------------------------------------------------------------------------------------


async def test_body_limits(gateway: Gateway, sage: Linked, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = record_upstream(gateway)
    # Let the global middleware limit pass the body so the proxy's own limit is what refuses it.
    gateway.app.state.lb.settings.max_body_bytes = 4 * safety.MAX_REQUEST_BODY_BYTES
    big = b'{"contact": {"name": "' + b"x" * safety.MAX_REQUEST_BODY_BYTES + b'"}}'
    r = await gateway.client.post(
        "/v1/proxy/contacts", content=big, headers=sage.headers(**{"Content-Type": "application/json"})
    )
    assert_refused(r, 413, "payload_too_large")
    assert recorder.requests == []
    monkeypatch.setattr(safety, "MAX_RESPONSE_BODY_BYTES", 64)
    r = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers())
    assert_refused(r, 502, "upstream_error")


# --- request log and rate budgets ------------------------------------------------------------------------


async def test_proxy_calls_are_in_the_request_log(gateway: Gateway, sage: Linked) -> None:
    ok = await gateway.client.get("/v1/proxy/contacts?items_per_page=2", headers=sage.headers())
    assert ok.status_code == 200
    refused = await raw_call(gateway, "GET", b"/v1/proxy/%2e%2e/token", sage.headers())
    assert refused.status == 400
    await gateway.flush_log()
    log = await gateway.client.get(
        f"/v1/requests?connection_id={sage.connection['id']}", headers=auth(sage.key)
    )
    assert log.status_code == 200, log.text
    entries = {e["id"]: e for e in log.json()["data"]}
    served = entries[ok.headers["x-request-id"]]
    assert served["path"] == "/v1/proxy/contacts"
    assert served["status"] == 200
    [call] = served["upstream_calls"]
    assert call["method"] == "GET"
    assert call["status"] == 200
    assert call["upstream_request_id"] == ok.headers["upstream-request-id"]
    denied = entries[refused.headers["x-request-id"]]
    assert denied["status"] == 400
    assert denied["error_code"] == "invalid_proxy_path"
    assert denied["upstream_calls"] == []


def remaining(response: httpx.Response, policy: str = "sage-accounting") -> int:
    match = re.search(rf'"{policy}";r=(\d+)', response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    return int(match.group(1))


async def test_proxy_calls_spend_the_shared_rate_budget(gateway: Gateway, sage: Linked) -> None:
    """Proxy and unified calls draw on one upstream budget (the real governor), and a spent budget
    refuses a proxy call before it reaches the upstream."""
    recorder = record_upstream(gateway)
    first = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers())
    assert first.status_code == 200
    unified = await gateway.client.get("/v1/contacts?page_size=1", headers=sage.headers())
    assert unified.status_code == 200
    assert remaining(unified) == remaining(first) - len(recorder.requests) + 1
    second = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers())
    assert remaining(second) == remaining(unified) - 1
    policy = re.search(r'"sage-accounting";q=(\d+)', second.headers["ratelimit-policy"])
    assert policy is not None
    used = int(policy.group(1)) - remaining(second)
    # The same budget store with the daily quota lowered to one more call (a restart with a new policy: the
    # old governor gives back the calls it had counted in advance).
    await gateway.app.state.lb.limiter.close()
    settings = gateway.settings.model_copy(
        update={"rate_limit_policies": {"sage-accounting": {"limit": used + 1}}}
    )
    governor = build_governor(settings)
    assert governor is not None
    await governor.start()
    gateway.app.state.lb.limiter = governor
    try:
        last = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers())
        assert last.status_code == 200, last.text
        sent = len(recorder.requests)
        refused = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers())
        assert_refused(refused, 429)
        assert int(refused.headers["retry-after"]) > 0
        assert len(recorder.requests) == sent, "a refused proxy call never reaches the upstream"
    finally:
        await governor.close()


# --- over a real socket ----------------------------------------------------------------------------------


async def _wire(port: int, request_line: bytes, headers: dict[str, str]) -> int:
    """Send one HTTP/1.1 request with a hand-written request line; return the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = request_line + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    writer.write(head + b"Host: gateway\r\nConnection: close\r\n\r\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(response.split(b" ", 2)[1])


WIRE_REFUSED = [
    b"GET /v1/proxy/../../token HTTP/1.1",
    b"GET /v1/proxy/%2e%2e/%2e%2e/token HTTP/1.1",
    b"GET /v1/proxy/contacts%2f..%2f..%2ftoken HTTP/1.1",
    b"GET /v1/proxy/%252e%252e/token HTTP/1.1",
    b"GET /v1/proxy//evil.example/contacts HTTP/1.1",
    b"GET /v1/proxy/http://evil.example/contacts HTTP/1.1",
    b"GET /v1/proxy/contacts%0d%0aHost:%20evil HTTP/1.1",
    b"GET /v1/proxy/contacts%00 HTTP/1.1",
    b"GET /v1/proxy/contacts\\..\\token HTTP/1.1",
    b"GET /v1/proxy/%EF%BC%8E%EF%BC%8E/token HTTP/1.1",
    b"POST /v1/proxy/a@evil.example/contacts HTTP/1.1",
]


async def test_hostile_request_lines_over_uvicorn(database_url: str, sims: Sims) -> None:
    """The same refusals when uvicorn parses the request line (its raw_path, its decoding)."""
    upstream = httpx.AsyncClient(transport=httpx.ASGITransport(app=sims.app), base_url=UPSTREAM)
    settings = gateway_settings(database_url)
    app = create_app(settings, http=upstream)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        # Setup goes in-process: over the socket, a request right after the connection's creation can race
        # its commit (the session dependency commits after the response is sent).
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY) as client:
            gateway = Gateway(client, upstream, app, sims, settings)
            key = await gateway.tenant()
            conn = await gateway.sage_connection(key)
            recorder = record_upstream(gateway)
            headers = auth(key, conn["id"])
            statuses = {line: await _wire(port, line, headers) for line in WIRE_REFUSED}
            assert all(status == 400 for status in statuses.values()), statuses
            assert recorder.requests == []
            # An absolute-form request target names the gateway, never the upstream host.
            line = b"GET http://evil.example/v1/proxy/contacts?items_per_page=1 HTTP/1.1"
            assert await _wire(port, line, headers) == 200
            [sent] = recorder.requests
            assert sent.raw_path == b"/sage-accounting/v3.1/contacts"
            assert sent.headers["host"] == "upstream"
    finally:
        server.should_exit = True
        await task
        await upstream.aclose()


async def test_hostile_paths_do_not_break_the_request_log(gateway: Gateway, sage: Linked) -> None:
    """A refused request is logged like any other, and no path can poison the log for later requests."""
    for target in (b"/v1/proxy/contacts%00x", b"/v1/proxy/" + b"a" * 2100):
        assert (await raw_call(gateway, "GET", target, sage.headers())).status == 400
    ok = await gateway.client.get("/v1/proxy/contacts", headers=sage.headers())
    await gateway.flush_log()
    log = await gateway.client.get(
        f"/v1/requests?connection_id={sage.connection['id']}", headers=auth(sage.key)
    )
    entries = [entry for entry in log.json()["data"] if entry["path"].startswith("/v1/proxy/")]
    assert ok.headers["x-request-id"] in [entry["id"] for entry in entries]
    assert sorted(entry["status"] for entry in entries) == [200, 400, 400]
