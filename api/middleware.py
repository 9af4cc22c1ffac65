"""The gateway's ASGI middleware: request ids, body limits, rate-limit headers, request log, metrics.

Pure ASGI (no BaseHTTPMiddleware): it sits on every call's hot path.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette._utils import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import context, metrics
from api.errors import problem_body
from api.redact import redact_body
from api.state import AppState

log = logging.getLogger("ledgerbridge.access")

_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class GatewayMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.lb
        ctx = context.begin()
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = get_route_path(scope)
        is_v1 = path.startswith("/v1/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctx.idempotency_key = headers.get("idempotency-key")
        status_holder = [500]

        body = b""
        if method in _WRITE_METHODS:
            limit = state.settings.max_body_bytes
            declared = headers.get("content-length", "")
            too_large = declared.isdigit() and int(declared) > limit
            chunks: list[bytes] = []
            size = 0
            more = not too_large
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    too_large = True
                    break
                chunks.append(chunk)
                more = message.get("more_body", False)
            if too_large:
                await self._problem(send, 413, "payload_too_large", f"The body exceeds {limit} bytes", ctx)
                return
            body = b"".join(chunks)
            if is_v1 and body:
                ctx.request_body = redact_body(body)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            downstream_receive: Receive = replay
        else:
            downstream_receive = receive

        started_response = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started_response[0] = True
                status_holder[0] = message["status"]
                extra: list[tuple[bytes, bytes]] = [(b"x-request-id", ctx.request_id.encode())]
                if ctx.upstream_request_id:
                    extra.append(
                        (b"upstream-request-id", ctx.upstream_request_id.encode("latin-1", "replace"))
                    )
                if is_v1 and ctx.tenant_id:
                    rl = await state.limiter.response_headers(ctx.tenant_id, ctx.provider, ctx.scope)
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    for name, value in {**rl, **ctx.rate_limit_headers}.items():
                        if name.lower().encode() not in present:
                            extra.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, downstream_receive, send_wrapper)
        except Exception as exc:
            # Answer unexpected errors here, inside the middleware, so they carry X-Request-Id too.
            if started_response[0]:
                raise
            log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
            status_holder[0] = 500
            await self._problem(send, 500, "internal_error", "An unexpected error occurred", ctx)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            status = status_holder[0]
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(method, route_path, str(status)).inc()
            if ctx.error_code:
                metrics.ERRORS.labels(ctx.error_code).inc()
            if is_v1 and ctx.tenant_id:
                state.request_log.add(
                    {
                        "id": ctx.request_id,
                        "tenant_id": ctx.tenant_id,
                        "connection_id": ctx.connection_id,
                        "method": method,
                        "path": loggable_path(path),
                        "status": status,
                        "duration_ms": round(duration_ms, 3),
                        "idempotency_key": ctx.idempotency_key[:255] if ctx.idempotency_key else None,
                        "error_code": ctx.error_code,
                        "request_body": ctx.request_body if method in _WRITE_METHODS else None,
                        "upstream_calls": ctx.upstream_calls,
                        "created_at": _now(),
                    }
                )
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "request_id": ctx.request_id,
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(duration_ms, 2),
                        "tenant_id": ctx.tenant_id,
                        "upstream_calls": len(ctx.upstream_calls),
                    },
                )

    @staticmethod
    async def _problem(send: Send, status: int, code: str, detail: str, ctx: context.RequestContext) -> None:
        payload = json.dumps(problem_body(status, code, code.replace("_", " ").capitalize(), detail)).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", ctx.request_id.encode()),
        ]
        if status == 413:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def loggable_path(path: str) -> str:
    """The path as stored in the request log: control characters escaped, length bounded (any caller
    controls it, and one unstorable row must never stall the log for every tenant)."""
    return "".join(c if c.isprintable() else f"%{ord(c):02X}" for c in path)[:2000]
