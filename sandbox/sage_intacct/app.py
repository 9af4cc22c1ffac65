"""``SageIntacctSimulator``: the ASGI app tying the XML gateway, the REST API, faults and control routes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sandbox.faults import Fault, Faults, control_routes

from .config import SimConfig
from .gateway import XmlGateway
from .jsonio import JSON
from .rest import OBJECTS, Principal, RestApi, RestError, error_response, gateway_error, json_response
from .seed import CUSTOMERS, add_invoice
from .state import XML_PATH, SimState
from .store import CompanyState
from .values import Record
from .xmlio import RESPONSE_CONTENT_TYPE, serialize, sub

REST_PREFIX = "/ia/api/v1"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Kind = Literal["xml", "rest"]
_CONFIG_KEYS = {
    "session_ttl",
    "public_url",
    "latency",
    "company_concurrency",
    "access_token_ttl",
    "refresh_token_ttl",
}


class SimulatedConnectionDrop(httpx.RemoteProtocolError):
    """Raised after a partial response to drop the connection (fault ``drop_after_commit``).

    Under uvicorn the partial body with a larger Content-Length makes clients raise
    ``httpx.RemoteProtocolError``; under ``httpx.ASGITransport`` this exception reaches the caller.
    """


class _DroppedResponse(Response):
    def __init__(self, inner: Response) -> None:
        super().__init__(content=inner.body, status_code=inner.status_code, media_type=inner.media_type)
        self._inner_headers = [(k, v) for k, v in inner.raw_headers if k.lower() != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytes(self.body)
        headers = [*self._inner_headers, (b"content-length", str(len(body) + 1024).encode())]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        raise SimulatedConnectionDrop("connection dropped after the call was committed")


def _gateway_throttled() -> bytes:
    """HTTP 429 body: control failure with errorno GW-0010, in the shape of the documented GW error
    (sage-intacct-wire.md §1.1, §1.5: <errorno>GW-0011</errorno><description>Invalid Request …)."""
    root = etree.Element("response")
    control = sub(root, "control", None)
    sub(control, "status", "failure")
    error = sub(sub(root, "errormessage", None), "error", None)
    sub(error, "errorno", "GW-0010")
    sub(error, "description", "Rate limit exceeded: too many concurrent requests for this company")
    return serialize(root)


def _login_rejected() -> bytes:
    """HTTP 401 with an XML body (PHP SDK RequestHandlerTest, sage-intacct-wire.md §1.1)."""
    root = etree.Element("response")
    control = sub(root, "control", None)
    sub(control, "status", "failure")
    error = sub(sub(root, "errormessage", None), "error", None)
    sub(error, "errorno", "XMLGW_JPP0002")
    sub(error, "description", "Sign-in information is incorrect. Please check your request.")
    return serialize(root)


def _record_json(record: Record) -> JSON:
    return {key: value if isinstance(value, str) else _record_json(value) for key, value in record.items()}


class SageIntacctSimulator:
    """A simulated Sage Intacct: XML gateway at ``/ia/xml/xmlgw.phtml``, REST at ``/ia/api/v1``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.state = SimState(self.config)
        self.gateway = XmlGateway(self.state)
        self.rest = RestApi(self.state)
        self.faults = Faults()
        self.inflight_by_company: dict[str, int] = {}
        self.max_inflight_by_company: dict[str, int] = {}
        self.app = Starlette(routes=self._routes())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------------------------------ in-process

    def company(self, company_id: str) -> CompanyState:
        return self.state.companies[company_id]

    def records(self, company_id: str, object_name: str) -> list[Record]:
        """Raw stored records (copies), e.g. to assert "exactly one GLBATCH with this reference"."""
        table = self.company(company_id).table(object_name.upper())
        return [copy.deepcopy(r) for r in table.records()]

    def expire_sessions(self) -> int:
        return self.state.expire_sessions()

    def expire_tokens(self) -> int:
        return self.state.expire_tokens()

    def update_config(self, **changes: Any) -> None:
        unknown = set(changes) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self.config, key, value)

    def seed_arinvoices(
        self, company_id: str, count: int, lines_per_invoice: int = 1, entity: str = ""
    ) -> list[int]:
        """Bulk-insert posted AR invoices (with ``lines_per_invoice`` ARINVOICEITEMs each) for benchmarks."""
        company = self.company(company_id)
        if entity and entity not in company.config.entities:
            raise ValueError(f"unknown entity {entity}")
        entities = [entity] if entity else (list(company.config.entities) or [""])
        customers = [c[0] for c in CUSTOMERS if company.table("CUSTOMER").find_id(c[0]) is not None]
        if not customers:
            raise ValueError("the company has no seeded customers")
        now = self.state.now_dt()
        start = date(now.year, 1, 1)
        created: list[int] = []
        for n in range(count):
            lines = [(Decimal(10 + (n + i) % 90) + Decimal("0.25"), "4000") for i in range(lines_per_invoice)]
            created.append(
                add_invoice(
                    company,
                    now,
                    customers[n % len(customers)],
                    start + timedelta(days=n % 365),
                    f"BULK-{n + 1:06d}",
                    lines,
                    entities[n % len(entities)],
                )
            )
        company.commit()
        return created

    # ------------------------------------------------------------------------------------------ routing

    def _routes(self) -> list[Any]:
        routes: list[Any] = [
            Route(XML_PATH, self._xml, methods=ALL_METHODS),
            Route(f"{REST_PREFIX}/oauth2/token", self._token, methods=["POST"]),
            Route(f"{REST_PREFIX}/services/core/query", self._query, methods=["POST"]),
        ]
        for path in OBJECTS:
            routes.append(Route(f"{REST_PREFIX}/objects/{path}", self._objects, methods=["GET", "POST"]))
            routes.append(
                Route(
                    f"{REST_PREFIX}/objects/{path}/{{key}}", self._object, methods=["GET", "PATCH", "DELETE"]
                )
            )
        routes += control_routes(self.faults)
        routes += [
            Route("/_sim/config", self._get_config, methods=["GET"]),
            Route("/_sim/config", self._patch_config, methods=["PATCH"]),
            Route("/_sim/expire-sessions", self._expire_sessions, methods=["POST"]),
            Route("/_sim/expire-tokens", self._expire_tokens, methods=["POST"]),
            Route("/_sim/seed/arinvoices", self._seed, methods=["POST"]),
            Route("/_sim/state/{company_id}/{object}", self._state, methods=["GET"]),
        ]
        return routes

    # ------------------------------------------------------------------------------------------ faults

    async def _guard(
        self, keys: list[str], company_id: str | None, kind: Kind, run: Callable[[], Response]
    ) -> Response:
        """Count the call, apply per-company concurrency and any armed fault, then run it.

        A fault matching the HTTP key or any function key applies to the whole HTTP response.
        """
        fault: Fault | None = None
        for key in keys:
            taken = self.faults.take(key)
            fault = fault or taken
        self.faults.enter()
        if company_id:
            self.inflight_by_company[company_id] = self.inflight_by_company.get(company_id, 0) + 1
        try:
            limit = self.config.company_concurrency
            if company_id and limit is not None and self.inflight_by_company[company_id] > limit:
                # §4: Intacct throttles on concurrency; the gateway answers 429 GW-0010.
                return self._status(429, kind, None, None)
            if company_id:
                self.max_inflight_by_company[company_id] = max(
                    self.max_inflight_by_company.get(company_id, 0), self.inflight_by_company[company_id]
                )
            if self.config.latency > 0:
                await asyncio.sleep(self.config.latency)
            if fault is not None and fault.kind == "status":
                return self._status(fault.status, kind, fault.retry_after, fault.body)
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.delay)
            response = run()
            if fault is None or fault.kind == "delay":
                return response
            if fault.kind == "status_after_commit":
                return self._status(fault.status, kind, fault.retry_after, fault.body)
            if fault.kind == "delay_after_commit":
                await asyncio.sleep(fault.delay)
                return response
            return _DroppedResponse(response)
        finally:
            self.faults.leave()
            if company_id:
                self.inflight_by_company[company_id] -= 1

    def _status(self, status: int, kind: Kind, retry_after: int | None, body: str | None) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        typed = {**headers, "content-type": RESPONSE_CONTENT_TYPE if kind == "xml" else "application/json"}
        if body is not None:
            return Response(body, status_code=status, headers=typed)
        if status == 429:
            if kind == "xml":
                return Response(_gateway_throttled(), status_code=429, headers=typed)
            throttled = gateway_error(429, "GW-0010", "Rate limit exceeded: too many concurrent requests")
            return json_response(throttled.body, 429, headers)
        if status == 401 and kind == "xml":
            return Response(_login_rejected(), status_code=401, headers=typed)
        # §1.1: 5xx (and 524) "mid-process failure" answers carry no body.
        return Response(b"", status_code=status, headers=headers)

    # ------------------------------------------------------------------------------------------ XML

    async def _xml(self, request: Request) -> Response:
        key = f"{request.method} {XML_PATH}"
        if request.method != "POST":
            # §1.1: "HTTP GET requests are not supported and will be blocked".
            self.faults.take(key)
            return Response(b"", status_code=405, headers={"Allow": "POST"})
        body = await request.body()
        prepared = self.gateway.prepare(body)

        def run() -> Response:
            return Response(self.gateway.execute(prepared), headers={"content-type": RESPONSE_CONTENT_TYPE})

        return await self._guard([key, *prepared.counter_keys()], prepared.company_id, "xml", run)

    # ------------------------------------------------------------------------------------------ REST

    async def _token(self, request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        authorization = request.headers.get("authorization")

        def run() -> Response:
            return self.rest.token(content_type, body, authorization)

        return await self._guard([f"POST {REST_PREFIX}/oauth2/token"], None, "rest", run)

    async def _rest_call(
        self, request: Request, template: str, call: Callable[[Principal, bytes], Response]
    ) -> Response:
        body = await request.body()
        principal: Principal | None = None
        failure: RestError | None = None
        try:
            principal = self.rest.authenticate(
                request.headers.get("authorization"), request.headers.get("x-ia-api-param-entity")
            )
        except RestError as exc:
            failure = exc

        def run() -> Response:
            if principal is None:
                assert failure is not None
                return error_response(failure)
            try:
                return call(principal, body)
            except RestError as exc:
                return error_response(exc)

        company = principal.token.company_id if principal else None
        return await self._guard([f"{request.method} {REST_PREFIX}{template}"], company, "rest", run)

    async def _objects(self, request: Request) -> Response:
        path = request.url.path.split("/objects/", 1)[1].rstrip("/")
        if request.method == "POST":
            return await self._rest_call(
                request, f"/objects/{path}", lambda p, b: self.rest.create(p, path, b)
            )
        return await self._rest_call(
            request, f"/objects/{path}", lambda p, b: self.rest.list_objects(p, path)
        )

    async def _object(self, request: Request) -> Response:
        key = request.path_params["key"]
        path = request.url.path.split("/objects/", 1)[1].rsplit("/", 1)[0]
        template = f"/objects/{path}/{{key}}"
        if request.method == "PATCH":
            return await self._rest_call(request, template, lambda p, b: self.rest.update(p, path, key, b))
        if request.method == "DELETE":
            return await self._rest_call(request, template, lambda p, b: self.rest.delete(p, path, key))
        return await self._rest_call(request, template, lambda p, b: self.rest.get(p, path, key))

    async def _query(self, request: Request) -> Response:
        return await self._rest_call(request, "/services/core/query", self.rest.query)

    # ------------------------------------------------------------------------------------------ control

    def _config_view(self) -> dict[str, Any]:
        return {
            f.name: getattr(self.config, f.name)
            for f in dataclass_fields(self.config)
            if f.name in _CONFIG_KEYS
        }

    async def _get_config(self, request: Request) -> Response:
        return JSONResponse(self._config_view())

    async def _patch_config(self, request: Request) -> Response:
        payload = await request.json()
        if not isinstance(payload, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        try:
            self.update_config(**payload)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(self._config_view())

    async def _expire_sessions(self, request: Request) -> Response:
        return JSONResponse({"expired": self.expire_sessions()})

    async def _expire_tokens(self, request: Request) -> Response:
        return JSONResponse({"expired": self.expire_tokens()})

    async def _seed(self, request: Request) -> Response:
        payload = await request.json()
        try:
            created = self.seed_arinvoices(
                str(payload["company_id"]),
                int(payload["count"]),
                int(payload.get("lines_per_invoice", 1)),
                str(payload.get("entity", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"error": f"invalid seed request: {exc}"}, status_code=400)
        body = {"created": len(created), "first_recordno": created[0] if created else None}
        body["last_recordno"] = created[-1] if created else None
        return JSONResponse(body, status_code=201)

    async def _state(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]
        object_name = str(request.path_params["object"]).upper()
        company = self.state.companies.get(company_id)
        if company is None or object_name not in company.tables:
            return JSONResponse({"error": "unknown company or object"}, status_code=404)
        return json_response([_record_json(r) for r in company.table(object_name).records()])
