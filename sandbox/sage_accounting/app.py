"""The Sage Business Cloud Accounting v3.1 simulator: OAuth server, ``/v3.1`` API and ``/_sim`` controls.

Every request goes through one pipeline per surface (OAuth or API) that counts it as
``"{METHOD} {route template}"``, applies the armed fault (``sandbox/faults.py``), and for the API checks the
bearer token, the per-app rate limits (§6), the business (§3.1) and idempotency (§7, factcheck §2) before
the handler runs. Section numbers refer to ``../shared/docs/sage-accounting-wire.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from sandbox.faults import Fault, Faults, control_routes, sleep

from . import resources as res
from .config import RUNTIME_FIELDS, SimConfig
from .oauth import SCOPES, AccessToken, OAuthError, OAuthReply, OAuthState
from .records import Ids, business_data, seed_business, user_data
from .store import BusinessData, IdempotencyEntry
from .wire import ApiError, access_denied, canonical_json, error_item, round_money, status_errors

API = "/v3.1"
JSON = "application/json"


class SimulatedDisconnect(httpx.RemoteProtocolError):
    """``drop_after_commit``: the response was started and then the connection dropped.

    Under uvicorn the client sees a real truncated response (``httpx.RemoteProtocolError``). Under
    ``httpx.ASGITransport`` this exception reaches the client unchanged, and being a
    ``RemoteProtocolError`` it exercises the same error handling.
    """


class _DroppedResponse(Response):
    """Promise a longer body than is sent, send half of it, then fail the connection."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(status_code=status)
        self._drop_headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        self._payload = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        promised = len(self._payload) + max(64, len(self._payload))
        headers = [*self._drop_headers, (b"content-length", str(promised).encode())]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send(
            {
                "type": "http.response.body",
                "body": self._payload[: len(self._payload) // 2],
                "more_body": True,
            }
        )
        raise SimulatedDisconnect("simulated connection drop after the write was committed")


@dataclass(frozen=True)
class _ApiRoute:
    method: str
    template: str
    handler: Callable[[res.Ctx], res.Reply]
    business: bool = True  # §3.1: /businesses and /user do not use (or echo) X-Business
    write: bool = False
    resource: str | None = None  # request wrapper key; enables idempotency (factcheck §2: POST and PUT)

    @property
    def key(self) -> str:
        return f"{self.method} {API}{self.template}"


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class SageAccountingSimulator:
    """ASGI app simulating Sage Business Cloud Accounting v3.1 (UK). All state lives in the instance.

    Routes (relative to the app root): ``GET /oauth2/auth/central``, ``POST /token``, ``POST /revoke`` and
    under ``/v3.1``: ``/businesses[/{key}]``, ``/user``, ``/contacts[/{key}]`` (GET, POST, PUT),
    ``/sales_invoices[/{key}]`` (GET, POST, DELETE = void), ``/sales_invoices/{key}/release``,
    ``/journals[/{key}]`` (GET, POST), and read-only ``/ledger_accounts``, ``/tax_rates``,
    ``/contact_types``, ``/currencies``, ``/bank_accounts``.

    Controls: ``/_sim/faults`` and ``/_sim/counters`` (``sandbox/faults.py``), ``POST /_sim/expire-tokens``,
    ``GET|PATCH /_sim/config``, ``POST /_sim/seed/sales_invoices``, ``GET /_sim/state/{collection}``,
    ``POST /_sim/clock``, ``POST /_sim/tokens``, ``GET /_sim/info``; in process: ``faults``,
    ``token_grants``, ``expire_tokens()``, ``update_config()``, ``seed_sales_invoices()``, ``state()``,
    ``advance_clock()``, ``issue_tokens()``, ``business_ids()``, ``lead_business_id()``.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.faults = Faults()
        self.ids = Ids(self.config.seed)
        self.oauth = OAuthState(self.config)
        self.token_grants: Counter[str] = Counter()
        self._clock_offset = 0.0
        self._inflight_by_client: Counter[str] = Counter()
        self._daily: dict[str, tuple[dt.date, int]] = {}
        self.businesses: dict[str, BusinessData] = {}
        self.users: dict[str, res.UserState] = {}
        self._build_world()
        self.app = Starlette(
            routes=self._routes(),
            exception_handlers={404: self._http_error, 405: self._http_error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # ================================================================================= world and clock

    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator clock (code/token/idempotency expiry, timestamps) forward."""
        self._clock_offset += seconds

    def _build_world(self) -> None:
        now = self.now()
        by_key: dict[str, str] = {}
        for spec in self.config.businesses:
            biz_id = spec.id or self.ids.new()
            biz = BusinessData(id=biz_id, key=spec.key, data=business_data(biz_id, spec.name, now))
            seed_business(biz, self.ids, now)
            self.businesses[biz_id] = biz
            by_key[spec.key] = biz_id
        for user in self.config.users:
            missing = [k for k in user.businesses if k not in by_key]
            if missing or not user.businesses:
                raise ValueError(f"user {user.login!r} refers to unknown businesses {missing}")
            user_id = user.id or self.ids.new()
            self.users[user.login] = res.UserState(
                login=user.login,
                id=user_id,
                data=user_data(user_id, user.first_name, user.last_name, user.email, now),
                business_ids=[by_key[k] for k in user.businesses],
            )
        if self.config.default_user not in self.users:
            raise ValueError(f"default_user {self.config.default_user!r} is not a configured user")

    # ================================================================================= routes

    def _routes(self) -> list[BaseRoute]:
        api = [
            _ApiRoute("GET", "/businesses", res.list_businesses, business=False),
            _ApiRoute("GET", "/businesses/{key}", res.get_business, business=False),
            _ApiRoute("GET", "/user", res.get_user, business=False),
            _ApiRoute("GET", "/contacts", res.list_contacts),
            _ApiRoute("POST", "/contacts", res.create_contact, write=True, resource="contact"),
            _ApiRoute("GET", "/contacts/{key}", res.get_plain("contacts")),
            _ApiRoute("PUT", "/contacts/{key}", res.update_contact, write=True, resource="contact"),
            _ApiRoute("GET", "/sales_invoices", res.list_sales_invoices),
            _ApiRoute(
                "POST", "/sales_invoices", res.create_sales_invoice, write=True, resource="sales_invoice"
            ),
            _ApiRoute("GET", "/sales_invoices/{key}", res.get_plain("sales_invoices")),
            _ApiRoute("DELETE", "/sales_invoices/{key}", res.void_sales_invoice, write=True),
            _ApiRoute("POST", "/sales_invoices/{key}/release", res.release_sales_invoice, write=True),
            _ApiRoute("GET", "/journals", res.list_journals),
            _ApiRoute("POST", "/journals", res.create_journal, write=True, resource="journal"),
            _ApiRoute("GET", "/journals/{key}", res.get_plain("journals")),
            _ApiRoute("GET", "/ledger_accounts", res.list_ledger_accounts),
        ]
        for collection in ("ledger_accounts", "tax_rates", "contact_types", "currencies", "bank_accounts"):
            if collection != "ledger_accounts":
                api.append(_ApiRoute("GET", f"/{collection}", res.list_plain(collection)))
            api.append(_ApiRoute("GET", f"/{collection}/{{key}}", res.get_plain(collection)))
        routes: list[BaseRoute] = [
            Route(f"{API}{r.template}", self._api_endpoint(r), methods=[r.method]) for r in api
        ]
        routes += [
            Route("/oauth2/auth/central", self._oauth_endpoint("GET /oauth2/auth/central", self._authorize)),
            Route("/token", self._oauth_endpoint("POST /token", self._token), methods=["POST"]),
            Route("/revoke", self._oauth_endpoint("POST /revoke", self._revoke), methods=["POST"]),
            *control_routes(self.faults),
            Route("/_sim/expire-tokens", self._ctl_expire_tokens, methods=["POST"]),
            Route("/_sim/config", self._ctl_config, methods=["GET", "PATCH"]),
            Route("/_sim/seed/sales_invoices", self._ctl_seed_invoices, methods=["POST"]),
            Route("/_sim/state/{collection}", self._ctl_state, methods=["GET"]),
            Route("/_sim/clock", self._ctl_clock, methods=["POST"]),
            Route("/_sim/tokens", self._ctl_tokens, methods=["POST"]),
            Route("/_sim/info", self._ctl_info, methods=["GET"]),
        ]
        return routes

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        path = request.url.path
        if f"{API}/" in path or path.endswith(API):  # also when mounted under a prefix
            headers[self.config.request_id_header] = str(uuid.uuid4())
            return Response(_dumps(status_errors(status)), status, headers, media_type=JSON)
        return PlainTextResponse("Not Found" if status == 404 else "Method Not Allowed", status, headers)

    # ================================================================================= faults

    @staticmethod
    def _retry_after(fault: Fault) -> dict[str, str]:
        return {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}

    def _fault_body(self, fault: Fault, surface: str) -> bytes:
        if fault.body is not None:
            return fault.body.encode()
        if surface == "api":
            return _dumps(status_errors(fault.status))
        error = "temporarily_unavailable" if fault.status in (429, 503) else "server_error"
        if fault.status < 500 and fault.status != 429:
            error = "invalid_request"
        return _dumps({"error": error, "error_description": f"Simulated HTTP {fault.status}."})

    async def _after_commit(
        self, fault: Fault | None, surface: str, status: int, headers: dict[str, str], body: bytes
    ) -> Response:
        if fault is not None and fault.kind == "status_after_commit":
            headers = {**headers, **self._retry_after(fault)}
            return Response(self._fault_body(fault, surface), fault.status, headers, media_type=JSON)
        if fault is not None and fault.kind == "delay_after_commit":
            await sleep(fault.delay)
        if fault is not None and fault.kind == "drop_after_commit":
            raw = Response(body, status, headers, media_type=JSON).raw_headers
            return _DroppedResponse(status, raw, body)
        return Response(body, status, headers, media_type=JSON if body else None)

    # ================================================================================= OAuth surface

    def _oauth_endpoint(
        self, key: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            fault = self.faults.take(key)
            surface = "authorize" if key.startswith("GET") else "oauth"
            if fault is not None and fault.kind == "delay":
                await sleep(fault.delay)
            if fault is not None and fault.kind == "status":
                headers = self._retry_after(fault)
                if surface == "authorize":
                    return PlainTextResponse(f"Simulated HTTP {fault.status}", fault.status, headers)
                return Response(self._fault_body(fault, surface), fault.status, headers, media_type=JSON)
            response = await handler(request)
            if fault is None or fault.kind == "delay":
                return response
            headers = {
                k.decode(): v.decode() for k, v in response.raw_headers if k not in (b"content-length",)
            }
            headers.pop("content-type", None)
            return await self._after_commit(
                fault, surface, response.status_code, headers, bytes(response.body)
            )

        return endpoint

    def _oauth_json(self, reply: OAuthReply) -> Response:
        # RFC 6749 §5.1: token responses must not be cached.
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return Response(_dumps(reply.body), reply.status, headers, media_type=JSON)

    async def _authorize(self, request: Request) -> Response:
        """§2.1: validate, auto-approve as the simulated user, redirect with ``code``/``country``/``state``."""
        q = request.query_params
        client_id, redirect_uri = q.get("client_id", ""), q.get("redirect_uri", "")
        # RFC 6749 §4.1.2.1: a bad client or redirect URI must not redirect; anything else redirects an error.
        if client_id not in self.config.clients:
            return PlainTextResponse("invalid_request: unknown client_id", 400)
        if not redirect_uri or not self.oauth.redirect_allowed(redirect_uri):
            return PlainTextResponse("invalid_request: redirect_uri is not registered for this client", 400)
        login = q.get("sim_user") or self.config.default_user
        if login not in self.users:
            return PlainTextResponse(f"invalid_request: unknown sim_user {login!r}", 400)
        state = q.get("state")

        def fail(error: str) -> Response:
            params = {"error": error, **({"state": state} if state is not None else {})}
            return RedirectResponse(self.oauth.callback_url(redirect_uri, params), 302)

        if q.get("response_type") != "code":
            return fail("unsupported_response_type")
        scope = q.get("scope") or "full_access"
        if scope not in SCOPES:
            return fail("invalid_scope")
        challenge = q.get("code_challenge")
        method = q.get("code_challenge_method") or "plain"  # RFC 7636 §4.3 default
        if (challenge is None and "code_challenge_method" in q) or method not in ("S256", "plain"):
            return fail("invalid_request")
        if q.get("sim_deny"):
            return fail("access_denied")
        country = q.get("country")
        if country and country.upper() != "GB":
            # §2.1: a country that does not match the business's region fails the auth; [G-fre] shows
            # this non-standard redirect for it.
            params = {"error": "Invalid request", "reason": "Email already in use"}
            return RedirectResponse(self.oauth.callback_url(redirect_uri, params), 302)
        code = self.oauth.new_code(
            client_id=client_id,
            redirect_uri=redirect_uri,
            user=login,
            scope=scope,
            challenge=challenge,
            method=method,
            now=self.now(),
        )
        params = {"code": code, "country": "GB", **({"state": state} if state is not None else {})}
        return RedirectResponse(self.oauth.callback_url(redirect_uri, params), 302)

    async def _form(self, request: Request) -> dict[str, str]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "The token endpoint takes application/x-www-form-urlencoded.")
        return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))

    async def _token(self, request: Request) -> Response:
        """§2.2–§2.4: code exchange and refresh (with rotation); errors are RFC 6749 JSON with 400."""
        try:
            form = await self._form(request)
        except OAuthError as exc:
            return self._oauth_json(exc.reply())
        grant_type = form.get("grant_type", "")
        self.token_grants[grant_type] += 1
        self.faults.calls[f"POST /token grant_type={grant_type}"] += 1
        try:
            client_id = self.oauth.authenticate_client(form, request.headers.get("authorization"))
            now = self.now()
            if grant_type == "authorization_code":
                grant = self.oauth.exchange_code(form, client_id, now)
                user, scope, family = grant.user, grant.scope, uuid.uuid4().hex
            elif grant_type == "refresh_token":
                old = self.oauth.rotate(form, client_id, now)
                user, scope, family = old.user, old.scope, old.family
            else:
                raise OAuthError("unsupported_grant_type", f"Unsupported grant_type {grant_type!r}.")
            body = self.oauth.issue(
                client_id=client_id,
                user_id=self.users[user].id,
                user=user,
                scope=scope,
                family=family,
                now=now,
            )
        except OAuthError as exc:
            return self._oauth_json(exc.reply())
        return self._oauth_json(OAuthReply(200, body))

    async def _revoke(self, request: Request) -> Response:
        """§2.5: 200 ``{"success":"ok"}``; only refresh tokens can be revoked."""
        try:
            form = await self._form(request)
            self.oauth.authenticate_client(form, request.headers.get("authorization"))
            token = form.get("token")
            if not token:
                raise OAuthError("invalid_request", "Missing parameter: token.")
            if self.oauth.revoke(token) == "access_token":
                # §2.5 "you cannot revoke access tokens"; RFC 7009 §2.2.1 names this error.
                raise OAuthError("unsupported_token_type", "Access tokens cannot be revoked.")
        except OAuthError as exc:
            return self._oauth_json(exc.reply())
        return self._oauth_json(OAuthReply(200, {"success": "ok"}))

    # ================================================================================= API surface

    def _api_endpoint(self, route: _ApiRoute) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._api(request, route)

        return endpoint

    async def _api(self, request: Request, route: _ApiRoute) -> Response:
        fault = self.faults.take(f"{request.method} {API}{route.template}")
        headers = {self.config.request_id_header: str(uuid.uuid4())}  # §8
        self.faults.enter()
        admitted: str | None = None
        try:
            if fault is not None and fault.kind == "status":
                headers.update(self._retry_after(fault))
                return Response(self._fault_body(fault, "api"), fault.status, headers, media_type=JSON)
            try:
                token = self._bearer(request)
                self._admit(token.client_id)
                admitted = token.client_id
                await sleep(self.config.latency)
                if fault is not None and fault.kind == "delay":
                    await sleep(fault.delay)
                ctx = res.Ctx(
                    method=request.method,
                    path=route.template.format(**request.path_params),
                    params=request.query_params.multi_items(),
                    path_params=dict(request.path_params),
                    body=None,
                    now=self.now(),
                    config=self.config,
                    ids=self.ids,
                    user=self.users[token.user],
                    businesses=self.businesses,
                )
                if route.business:
                    ctx.biz_id = self._business_for(request, ctx.user)
                    headers["X-Business"] = ctx.biz_id  # §3.1: echo the business actually used
                if route.write and token.scope == "readonly":
                    raise access_denied()  # §10.8: presumably 403 for readonly tokens (UNCONFIRMED)
                ctx.body = await self._json_body(request)
                ctx.now = self.now()
                status, body = self._execute(ctx, route)
            except ApiError as exc:
                headers.update(exc.headers)
                status, body = exc.status, _dumps(exc.errors)
            return await self._after_commit(fault, "api", status, headers, body)
        finally:
            if admitted is not None:
                self._inflight_by_client[admitted] -= 1
            self.faults.leave()

    def _bearer(self, request: Request) -> AccessToken:
        scheme, _, raw = request.headers.get("authorization", "").partition(" ")
        token = self.oauth.access_token(raw.strip(), self.now()) if scheme.lower() == "bearer" else None
        if token is None:
            # §5.3: 401 with the error array; the exact $dataCode is UNCONFIRMED.
            raise ApiError(401, status_errors(401))
        return token

    def _admit(self, client_id: str) -> None:
        """§6: per-app daily quota and concurrency cap → 429 with the error array."""
        today = dt.datetime.fromtimestamp(self.now(), tz=dt.UTC).date()
        day, used = self._daily.get(client_id, (today, 0))
        if day != today:
            used = 0
        retry = self.config.rate_limit_retry_after
        headers = {"Retry-After": str(retry)} if retry is not None else {}
        if used >= self.config.daily_quota:
            raise ApiError(
                429, [error_item("TooManyRequests", "The daily request quota has been exceeded.")], headers
            )
        if self._inflight_by_client[client_id] >= self.config.max_concurrent_requests:
            raise ApiError(429, [error_item("TooManyRequests", "Too many concurrent requests.")], headers)
        self._daily[client_id] = (today, used + 1)
        self._inflight_by_client[client_id] += 1

    def _business_for(self, request: Request, user: res.UserState) -> str:
        requested = request.headers.get("x-business", "").strip()
        if not requested:
            return user.lead  # §3.1: optional, falls back to the lead business
        if requested not in user.business_ids:
            # §3.1 leaves this UNCONFIRMED; §10.8 documents 403 MultiUserAccessDenied for access violations.
            raise access_denied()
        return requested

    async def _json_body(self, request: Request) -> Any:
        raw = await request.body()
        if request.method == "GET" or not raw.strip():
            return None
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            if request.method == "DELETE":
                return None
            # §1 [G-mig §9] "API v3.1 only accepts requests with a content type of JSON"; §5.2 415.
            raise ApiError(415, status_errors(415))
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(
                422, [error_item("RecordInvalid", "The request body is not valid JSON.", "base")]
            ) from None

    def _execute(self, ctx: res.Ctx, route: _ApiRoute) -> tuple[int, bytes]:
        """Run the handler, with idempotency (§7 / factcheck §2) on wrapped POST/PUT bodies."""
        resource = route.resource
        payload = ctx.body.get(resource) if resource and isinstance(ctx.body, dict) else None
        idem = payload.get("idempotency_id") if isinstance(payload, dict) else None
        if idem is None or ctx.biz_id is None or resource is None or not isinstance(payload, dict):
            reply = route.handler(ctx)
            return reply.status, _dumps(reply.body)
        if not res.idempotency_id_valid(idem):
            raise ApiError(
                422, [error_item("RecordInvalid", "is not a 32 character hexadecimal GUID", "idempotency_id")]
            )
        store = ctx.biz.idempotency
        fingerprint = canonical_json(
            [ctx.method, ctx.path, {k: v for k, v in payload.items() if k != "idempotency_id"}]
        )
        entry = store.get(idem)
        if entry is not None and entry.expires <= ctx.now:
            del store[idem]
            entry = None
        if entry is not None:
            if entry.resource != resource:
                # factcheck §2: documented body; the status is not documented. 422 is the code Sage uses for
                # requests it refuses to process (§5.2), and v3.1 shows no 409 anywhere.
                raise ApiError(422, [error_item("IdempotencyResourceMismatch", "Entity type mismatch")])
            if entry.fingerprint != fingerprint and self.config.idempotency_body_mismatch == "reject":
                raise ApiError(
                    422,
                    [
                        error_item(
                            "RecordInvalid",
                            "idempotency_id was used with a different request",
                            "idempotency_id",
                        )
                    ],
                )
            # factcheck §2: "a repetition of this very same request will return the exact same result".
            return entry.status, entry.body
        reply = route.handler(ctx)
        body = _dumps(reply.body)
        if 200 <= reply.status < 300:  # errors are not cached: a corrected retry must run
            store[idem] = IdempotencyEntry(
                resource, fingerprint, reply.status, body, ctx.now + self.config.idempotency_ttl
            )
        return reply.status, body

    # ================================================================================= in-process controls

    def business_ids(self, user: str | None = None) -> list[str]:
        return list(self.users[user or self.config.default_user].business_ids)

    def lead_business_id(self, user: str | None = None) -> str:
        return self.users[user or self.config.default_user].lead

    def _business(self, business_id: str | None) -> BusinessData:
        biz_id = business_id or self.lead_business_id()
        if biz_id not in self.businesses:
            raise KeyError(f"unknown business {biz_id!r}")
        return self.businesses[biz_id]

    def expire_tokens(self) -> int:
        """Make every current access token expired now (refresh tokens stay valid)."""
        return self.oauth.expire_access_tokens(self.now())

    def update_config(self, **changes: Any) -> dict[str, Any]:
        unknown = set(changes) - RUNTIME_FIELDS
        if unknown:
            raise ValueError(f"not runtime-settable: {sorted(unknown)}")
        for name, value in changes.items():
            setattr(self.config, name, value)
        return self.runtime_config()

    def runtime_config(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in sorted(RUNTIME_FIELDS)}

    def issue_tokens(
        self, user: str | None = None, client_id: str | None = None, scope: str = "full_access"
    ) -> dict[str, Any]:
        """A token response as ``POST /token`` would give it, skipping the consent redirect."""
        login = user or self.config.default_user
        client = client_id or next(iter(self.config.clients))
        return self.oauth.issue(
            client_id=client,
            user_id=self.users[login].id,
            user=login,
            scope=scope,
            family=uuid.uuid4().hex,
            now=self.now(),
        )

    def state(self, collection: str, business_id: str | None = None) -> list[dict[str, Any]]:
        """Raw records of a collection (wire shape), in creation order."""
        return res.records_of(self._business(business_id).coll(collection))

    def seed_sales_invoices(
        self, count: int, lines_per_invoice: int = 2, business_id: str | None = None
    ) -> list[str]:
        """Bulk-create realistic UNPAID invoices for benchmarks (bypasses HTTP, validation and counters)."""
        biz = self._business(business_id)
        customers = [
            r
            for r in biz.coll("contacts").order
            if not r.data["system"] and any(t["id"] == "CUSTOMER" for t in r.data["contact_types"])
        ]
        ledgers = [r for r in biz.coll("ledger_accounts").order if r.data["visible_in_sales"]]
        rates = biz.coll("tax_rates")
        standard, zero = rates.by_id["GB_STANDARD"], rates.by_id["GB_ZERO"]
        now = self.now()
        today = dt.datetime.fromtimestamp(now, tz=dt.UTC).date()
        created: list[str] = []
        for i in range(count):
            lines = []
            for j in range(max(1, lines_per_invoice)):
                quantity = Decimal(1 + (i + j) % 9)
                unit_price = Decimal(1999 + 137 * ((i * 7 + j) % 50)) / 100
                rate = zero if (i + j) % 5 == 0 else standard
                net = round_money(quantity * unit_price)
                tax = round_money(net * Decimal(rate.data["percentage"]) / 100)
                lines.append(
                    res.Line(
                        f"Consulting services, item {j + 1}",
                        ledgers[j % len(ledgers)],
                        quantity,
                        unit_price,
                        rate,
                        tax,
                    )
                )
            date = today - dt.timedelta(days=i % 365)
            head = res.InvoiceHeader(
                contact=customers[i % len(customers)],
                date=date,
                due_date=date + dt.timedelta(days=self.config.default_credit_days),
                status="UNPAID",
                reference=f"BENCH-{i + 1:06d}",
            )
            created.append(res.build_invoice(biz, self.ids, now, head, lines).id)
        return created

    # ================================================================================= /_sim HTTP controls

    async def _ctl_expire_tokens(self, request: Request) -> Response:
        return JSONResponse({"expired": self.expire_tokens()})

    async def _ctl_config(self, request: Request) -> Response:
        if request.method == "PATCH":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                return JSONResponse(self.update_config(**changes))
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(self.runtime_config())

    async def _ctl_seed_invoices(self, request: Request) -> Response:
        payload = await request.json()
        try:
            ids = self.seed_sales_invoices(
                int(payload["count"]), int(payload.get("lines_per_invoice", 2)), payload.get("business_id")
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(
            {"created": len(ids), "business_id": self._business(payload.get("business_id")).id}, 201
        )

    async def _ctl_state(self, request: Request) -> Response:
        try:
            records = self.state(request.path_params["collection"], request.query_params.get("business_id"))
        except KeyError as exc:
            return JSONResponse({"error": str(exc)}, 404)
        return Response(_dumps(records), media_type=JSON)

    async def _ctl_clock(self, request: Request) -> Response:
        payload = await request.json()
        self.advance_clock(float(payload.get("advance", 0)))
        return JSONResponse({"now": self.now()})

    async def _ctl_tokens(self, request: Request) -> Response:
        payload = await request.json() if (await request.body()).strip() else {}
        return JSONResponse(
            self.issue_tokens(
                payload.get("user"), payload.get("client_id"), payload.get("scope", "full_access")
            )
        )

    async def _ctl_info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "clients": list(self.config.clients),
                "users": {u.login: {"id": u.id, "businesses": u.business_ids} for u in self.users.values()},
                "businesses": {b.id: b.data["name"] for b in self.businesses.values()},
                "config": {k: v for k, v in dataclasses.asdict(self.config).items() if k in RUNTIME_FIELDS},
            }
        )
