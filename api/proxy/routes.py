"""``/v1/proxy/…``: raw passthrough to the connection's upstream (CONTRACT §8).

Routes, in matching order: ``POST /v1/proxy/xml`` (Sage Intacct XML functions), ``/v1/proxy/rest/{path}``
(Sage Intacct REST), ``/v1/proxy/{path}`` (Sage Accounting). The caller's request is vetted by
:mod:`api.proxy.safety` before the connector is even built; the connector injects the upstream auth and
makes the call through the gate, so proxy calls share the rate budgets and the request log with unified
calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from api import context
from api.connections.refs import ConnectionRef, load_connection
from api.connections.service import HEALTH_CODES, build_connector, record_health
from api.deps import Caller, Principal, app_state
from api.errors import ApiError, problem_response
from api.proxy import replay, safety
from api.schemas import problem_responses
from connectors.base import ProxyResponse
from connectors.errors import ConnectorError

router = APIRouter(tags=["proxy"])


class AnyPathConvertor(Convertor[str]):
    """Starlette's ``path`` convertor without its blind spot: ``.*`` stops at a newline, so a path with a
    (decoded) CR/LF would fall through to a bare 404 instead of reaching the proxy's checks and their 400."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("proxypath", AnyPathConvertor())

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Intacct REST endpoints the gateway itself manages (tokens); a caller may not drive them.
_INTACCT_REST_RESERVED = frozenset({"oauth2"})

ConnectionHeader = Annotated[
    str, Header(alias="X-Connection-Id", max_length=64, description="The connection to use")
]
UpstreamPath = Annotated[
    str,
    Path(
        description="The upstream-relative path: plain segments; no scheme, host, `//`, `..`, `@`, `:`, "
        "backslash or encoded `/` `.` `%` (Swagger UI encodes `/` here: call nested paths with curl)"
    ),
]
PROXY_ERRORS = problem_responses(400, 401, 404, 409, 413, 422, 429, 501, 502, 503, 504)


def _raw_path(request: Request) -> tuple[bytes, str]:
    """The request path as received (percent-encoded bytes) and as the router decoded it."""
    scope = request.scope
    decoded: str = scope["path"]
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        raw = quote(decoded, safe="/").encode("ascii")
    raw = raw.split(b"?", 1)[0]
    # Behind a path-prefixing reverse proxy (uvicorn --root-path) both forms start with the root path.
    root: str = scope.get("root_path", "")
    if root and decoded.startswith(root) and raw.startswith(root.encode("latin-1")):
        raw, decoded = raw[len(root) :], decoded[len(root) :]
    return raw, decoded


def _relative(request: Request, prefix: str) -> str:
    """The vetted upstream-relative path after ``prefix`` (which must appear literally, unencoded)."""
    raw, decoded = _raw_path(request)
    if not raw.startswith(prefix.encode()) or not decoded.startswith(prefix):
        raise safety.refused("The proxy route prefix must not be percent-encoded", "invalid_proxy_path")
    return safety.vet_path(raw[len(prefix) :], decoded[len(prefix) :])


async def _body(request: Request) -> bytes:
    if request.method not in _BODY_METHODS:
        return b""
    declared = request.headers.get("content-length", "")
    limit = safety.MAX_REQUEST_BODY_BYTES
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"A proxy body may not exceed {limit} bytes")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"A proxy body may not exceed {limit} bytes")
    return body


async def _proxied(request: Request, caller: Principal, connection_id: str, provider: str) -> ConnectionRef:
    """The caller's connection, which must be of ``provider`` (each proxy route speaks one upstream)."""
    connection = await load_connection(app_state(request), caller.tenant_id, connection_id)
    if connection.provider != provider:
        routes = {
            "sage_accounting": "/v1/proxy/{path}",
            "sage_intacct": "POST /v1/proxy/xml and /v1/proxy/rest/{path}",
        }
        hint = routes.get(connection.provider, "no proxy route")
        raise ApiError(
            404,
            "proxy_route_not_found",
            f"Connections of provider {connection.provider!r} are proxied at {hint}",
        )
    return connection


async def _forward(
    request: Request, connection: ConnectionRef, call: Callable[[], Awaitable[ProxyResponse]]
) -> Response:
    state = app_state(request)
    try:
        upstream = await call()
    except ConnectorError as exc:
        if exc.code in HEALTH_CODES:
            await record_health(state, connection, f"{exc.code}: {exc.detail}")
        raise
    await record_health(state, connection, None)
    if len(upstream.body) > safety.MAX_RESPONSE_BODY_BYTES:
        detail = (
            f"The upstream answered {upstream.status} with more than {safety.MAX_RESPONSE_BODY_BYTES} bytes"
        )
        return problem_response(502, "upstream_error", "Upstream error", detail)
    ctx = context.current()
    if ctx is not None and upstream.upstream_request_id:
        ctx.upstream_request_id = upstream.upstream_request_id
    headers = safety.response_headers(upstream.headers)
    if upstream.content_type:
        headers["content-type"] = upstream.content_type
    # Upstream bodies are served from the gateway's origin: never let a browser render or sniff them.
    headers["x-content-type-options"] = "nosniff"
    headers["content-security-policy"] = "default-src 'none'; sandbox"
    content = b"" if request.method == "HEAD" else upstream.body
    return Response(content=content, status_code=upstream.status, headers=headers)


async def proxy_intacct_xml(request: Request, caller: Caller, x_connection_id: ConnectionHeader) -> Response:
    """Sage Intacct: the body's ``<function>`` elements (or one ``<content>``) are wrapped in the
    control/authentication envelope with the connection's session; the upstream XML comes back unchanged."""
    connection = await _proxied(request, caller, x_connection_id, "sage_intacct")
    functions = safety.vet_functions(await _body(request))
    state = app_state(request)
    connector = build_connector(state, connection)
    return await replay.once(
        state,
        connection,
        method="POST",
        route="/v1/proxy/xml",
        target="",
        content_type=None,
        body=functions,
        raw_key=request.headers.get("idempotency-key"),
        run=lambda: _forward(request, connection, lambda: connector.proxy_xml(functions)),
    )


async def proxy_intacct_rest(
    path: UpstreamPath, request: Request, caller: Caller, x_connection_id: ConnectionHeader
) -> Response:
    """Sage Intacct REST: ``{rest_url}/{path}`` with the connection's bearer token."""
    connection = await _proxied(request, caller, x_connection_id, "sage_intacct")
    return await _passthrough(request, connection, "/v1/proxy/rest/", reserved=_INTACCT_REST_RESERVED)


async def proxy_any(
    path: UpstreamPath, request: Request, caller: Caller, x_connection_id: ConnectionHeader
) -> Response:
    """Sage Accounting: ``{api_url}/{path}`` with the connection's token and ``X-Business``."""
    connection = await _proxied(request, caller, x_connection_id, "sage_accounting")
    return await _passthrough(request, connection, "/v1/proxy/")


async def _passthrough(
    request: Request, connection: ConnectionRef, prefix: str, *, reserved: frozenset[str] = frozenset()
) -> Response:
    relative = _relative(request, prefix)
    if relative.split("/", 1)[0].lower() in reserved:
        raise safety.refused("This upstream endpoint is managed by the gateway", "invalid_proxy_path")
    query = safety.vet_query(request.scope.get("query_string", b""))
    headers = safety.forwarded_headers(request.headers)
    body = await _body(request)
    state = app_state(request)
    connector = build_connector(state, connection)
    method = request.method
    return await replay.once(
        state,
        connection,
        method=method,
        route=prefix + "{path}",
        target=f"{relative}?{query}",
        content_type=headers.get("content-type"),
        body=body,
        raw_key=request.headers.get("idempotency-key"),
        run=lambda: _forward(
            request,
            connection,
            lambda: connector.proxy(method, relative, query=query, headers=headers, body=body),
        ),
    )


_XML_EXAMPLE = (
    '<function controlid="q1"><readByQuery><object>CUSTOMER</object><fields>*</fields>'
    "<query></query><pagesize>10</pagesize></readByQuery></function>"
)
_IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Sent once per key: a retry with the same key and request replays the stored answer "
    "(`Idempotent-Replayed: true`); kept at least 7 days.",
}
_XML_BODY: dict[str, Any] = {
    "parameters": [_IDEMPOTENCY_KEY],
    "requestBody": {
        "required": True,
        "content": {"application/xml": {"schema": {"type": "string"}, "example": _XML_EXAMPLE}},
    },
}
_RAW_BODY: dict[str, Any] = {
    "parameters": [_IDEMPOTENCY_KEY],
    "requestBody": {"required": False, "content": {"application/json": {"schema": {}}}},
}


router.add_api_route(
    "/v1/proxy/xml",
    proxy_intacct_xml,
    methods=["POST"],
    name="proxy_intacct_xml",
    summary="Sage Intacct XML functions",
    responses=PROXY_ERRORS,
    response_class=Response,
    openapi_extra=_XML_BODY,
)
for _prefix, _endpoint, _name, _what in (
    ("/v1/proxy/rest/", proxy_intacct_rest, "proxy_intacct_rest", "Sage Intacct REST"),
    ("/v1/proxy/", proxy_any, "proxy", "Sage Accounting"),
):
    for _method in METHODS:
        router.add_api_route(
            _prefix + "{path:proxypath}",
            _endpoint,
            methods=[_method],
            name=f"{_name}_{_method.lower()}",
            summary=f"{_what} passthrough ({_method})",
            responses=PROXY_ERRORS,
            response_class=Response,
            openapi_extra=_RAW_BODY if _method in _BODY_METHODS else None,
        )
