"""Sage Business Cloud Accounting v3.1.

Section numbers (§N) refer to ``../shared/docs/sage-accounting-wire.md``; "factcheck §N" to
``../shared/docs/factcheck.md``.

Every upstream call goes through :meth:`SageAccountingConnector._request`: it loads the stored tokens,
refreshes them under the store's single-flight lock when they are inside the refresh margin, sends the
call with ``Authorization`` and ``X-Business`` through :func:`connectors.http.send`, and on a 401 refreshes
once (unless another holder already did) and retries once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
from pydantic import BaseModel

from connectors.base import (
    PROXY_REQUEST_HEADERS,
    CallKind,
    Capability,
    CheckResult,
    Connector,
    ConnectorContext,
    ListQuery,
    MemoryCredentialStore,
    Operation,
    ProviderInfo,
    ProxyResponse,
    Resource,
    StoredSecrets,
    TokenSet,
    UpstreamCall,
    WriteRequest,
    derive_guard,
)
from connectors.errors import (
    BusinessSelectionRequired,
    ConnectorError,
    ErrorCollector,
    InvalidCredentials,
    NotFound,
    Problem,
    RateLimited,
    ReauthorizationRequired,
    UpstreamError,
    UpstreamInfo,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from connectors.http import (
    DEFAULT_POLICY,
    RetryMode,
    RetryPolicy,
    parsed_url,
    send,
    upstream_request_id,
)
from connectors.models import (
    Account,
    Contact,
    ContactCreate,
    ContactUpdate,
    Invoice,
    InvoiceCreate,
    InvoiceStatus,
    InvoiceVoid,
    Journal,
    JournalCreate,
    Page,
    TaxRate,
    trusted,
)
from connectors.sage_accounting import mapping, oauth
from connectors.sage_accounting.config import SageAccountingApp, SageAccountingSettings, SageBusiness
from connectors.sage_accounting.wire import (
    MAX_PAGE_SIZE,
    PROVIDER,
    Purpose,
    decode_cursor,
    dumps,
    encode_cursor,
    error_for,
    json_body,
    list_items,
    list_path,
    next_path,
    since_param,
    typed_items,
    upstream_info,
)

_O = Operation
T = TypeVar("T", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)

logger = logging.getLogger(__name__)
_PAGE: Callable[..., Page[Any]] = trusted(Page)

# Response headers a proxy caller may see (CONTRACT §8); the rest (cookies, hop-by-hop) stays here.
PROXY_RESPONSE_HEADERS = (
    "content-type",
    "x-business",
    "x_request_id",
    "retry-after",
    "link",
    "etag",
    "last-modified",
)
# §3.1: the only endpoints that do not act on a business (no X-Business needed or echoed).
UNSCOPED_PATHS = frozenset({"businesses", "user"})
# §3.2: GET /businesses pages are 25..500 items.
BUSINESSES_PAGE_SIZE = 500
MAX_REFERENCE_PAGES = 50
INVOICE_RENAMES = {"date": "issue_date"}
VOID_REASON_MAX = 200  # [SPEC] SalesInvoice.void_reason maxLength

FILTERS: dict[Resource, dict[str, str]] = {
    # §4.3: GET /contacts takes contact_type_id, email and search ("the contact name, company name or
    # reference"); GET /sales_invoices takes contact_id and status_id.
    Resource.contacts: {"role": "contact_type_id", "email": "email", "name": "search"},
    Resource.invoices: {"contact_id": "contact_id", "status": "status_id"},
}
FILTER_VALUES: dict[str, dict[str, str]] = {
    "role": {role.value: kind for role, kind in mapping.ROLE_TYPES.items()},
    "status": mapping.STATUS_FILTERS,
}


class _GrantDead(Exception):
    def __init__(self, reason: str, upstream: UpstreamInfo | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.upstream = upstream


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _coerce(model: BaseModel, cls: type[M]) -> M:
    return model if isinstance(model, cls) else cls.model_validate(model.model_dump())


def _key(record_id: str) -> str:
    return quote(record_id, safe="")


class SageAccountingConnector(Connector):
    """Sage Business Cloud Accounting v3.1: OAuth 2.0 with rotating refresh tokens, one business per connection.

    Built per request from a :class:`ConnectorContext` whose ``app`` is a :class:`SageAccountingApp` and
    whose ``settings`` is a :class:`SageAccountingSettings`; tokens live in ``ctx.store``
    (``access_token``, ``refresh_token``, ``token_lifetime``, ``refresh_token_expires_at``).
    """

    info = ProviderInfo(
        "sage_accounting",
        "Sage Business Cloud Accounting",
        "oauth2",
        "https://developer.sage.com/accounting/",
    )
    App = SageAccountingApp
    Settings = SageAccountingSettings
    capabilities: ClassVar[tuple[Capability, ...]] = (
        Capability(
            Resource.contacts,
            frozenset({_O.list, _O.get, _O.create, _O.update}),
            frozenset({"role", "email", "name", "updated_since"}),
        ),
        Capability(
            Resource.invoices,
            frozenset({_O.list, _O.get, _O.create, _O.void, _O.validate}),
            frozenset({"contact_id", "status", "updated_since"}),
        ),
        Capability(
            Resource.journals,
            frozenset({_O.list, _O.get, _O.create, _O.validate}),
            frozenset({"updated_since"}),
        ),
        Capability(Resource.accounts, frozenset({_O.list}), frozenset({"updated_since"})),
        Capability(Resource.tax_rates, frozenset({_O.list}), frozenset({"updated_since"})),
    )
    retry_policy: RetryPolicy = DEFAULT_POLICY
    """Backoff of API calls (tests shorten it)."""

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.app = _coerce(ctx.app, SageAccountingApp)
        self.settings = _coerce(ctx.settings, SageAccountingSettings)

    # --- connection lifecycle -------------------------------------------------------------------------

    @classmethod
    def authorization_url(cls, app: BaseModel, *, redirect_uri: str, state: str, code_challenge: str) -> str:
        return oauth.authorization_url(
            _coerce(app, SageAccountingApp),
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=code_challenge,
        )

    @classmethod
    async def exchange_code(
        cls, http: httpx.AsyncClient, app: BaseModel, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenSet:
        sage_app = _coerce(app, SageAccountingApp)
        ctx = ConnectorContext(
            http=http, app=sage_app, settings=SageAccountingSettings(), store=MemoryCredentialStore()
        )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        try:
            tokens = await oauth.token_call(ctx, sage_app, form, "POST /token authorization_code")
        except oauth.TokenRejected as exc:
            if exc.error == "invalid_grant":
                # §2.4: an expired (60 s), reused or mismatched code; nothing is stored.
                raise InvalidCredentials(
                    "Sage rejected the authorization code (expired, already used or for another redirect URI); "
                    "start the authorization again",
                    upstream=exc.upstream,
                ) from None
            raise
        if oauth.REFRESH_TOKEN not in tokens.secrets:
            raise UpstreamError(
                "The Sage token endpoint issued no refresh token", upstream=UpstreamInfo(PROVIDER)
            )
        country = oauth.country_of_code(code)
        return TokenSet(tokens.secrets, tokens.expires_at, {"country": country} if country else {})

    async def check(self) -> CheckResult:
        """List the user's businesses (§3.2) and report whether the selected one is among them.

        Errors of the call itself (reauthorization, upstream down) are raised, not folded into the result.
        """
        businesses = await self._businesses()
        listed = [{"id": b.id, "name": b.name} for b in businesses]
        names = {b.id: b.name or b.id for b in businesses}
        current = self.settings.business_id
        if current is not None:
            settings = {"businesses": listed, "business_id": current}
            if current not in names:
                return CheckResult(
                    False,
                    f"The selected Sage business {current} is not available to this user any more; "
                    "select one of the listed businesses",
                    settings,
                )
            return CheckResult(True, f"Connected to {names[current]}", settings)
        if not businesses:
            return CheckResult(
                False, "The Sage user has no business", {"businesses": [], "business_id": None}
            )
        if len(businesses) == 1:
            only = businesses[0]
            return CheckResult(
                True, f"Connected to {names[only.id]}", {"businesses": listed, "business_id": only.id}
            )
        return CheckResult(
            True,
            f"The Sage user has {len(businesses)} businesses: select one for this connection",
            {"businesses": listed, "business_id": None},
        )

    async def revoke(self) -> None:
        """§2.5: only refresh tokens can be revoked; best effort, failures are logged and ignored."""
        token = (await self.ctx.store.load()).values.get(oauth.REFRESH_TOKEN)
        if not token:
            return
        content = urlencode(
            {
                "client_id": self.app.client_id,
                "client_secret": self.app.client_secret.get_secret_value(),
                "token": token,
            }
        ).encode()
        request = httpx.Request(
            "POST",
            self.app.revoke_url,
            content=content,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        call = UpstreamCall(PROVIDER, "POST", self.app.revoke_url, "auth", label="POST /revoke")
        try:
            response = await send(self.ctx, call, request, retry="never", policy=self.retry_policy)
        except ConnectorError as exc:
            logger.warning("Sage token revocation failed: %s", type(exc).__name__)
            return
        if not response.is_success:
            logger.warning("Sage token revocation answered %s", response.status_code)

    # --- contacts -----------------------------------------------------------------------------------

    async def list_contacts(self, query: ListQuery) -> Page[Contact]:
        return await self._list("contacts", Resource.contacts, query, mapping.contact_from_sage)

    async def get_contact(self, record_id: str, *, include_raw: bool = False) -> Contact:
        item = await self._get(f"/contacts/{_key(record_id)}", "GET /contacts/{key}")
        return mapping.contact_from_sage(item, include_raw=include_raw)

    async def create_contact(self, data: ContactCreate, write: WriteRequest) -> Contact:
        body, problems = mapping.contact_body(data)
        ErrorCollector(problems).raise_if_any("The contact cannot be carried to Sage Accounting")
        response = await self._write(
            "POST",
            "/contacts",
            label="POST /contacts",
            purpose="create",
            payload={"contact": self._guarded(body, write)},
        )
        return mapping.contact_from_sage(_record(response))

    async def update_contact(self, record_id: str, data: ContactUpdate, write: WriteRequest) -> Contact:
        body, problems = mapping.contact_body(data)
        ErrorCollector(problems).raise_if_any("The contact change cannot be carried to Sage Accounting")
        if not body:
            return await self.get_contact(record_id)
        # factcheck §2: "Idempotency works for POST as well as PUT requests".
        response = await self._write(
            "PUT",
            f"/contacts/{_key(record_id)}",
            label="PUT /contacts/{key}",
            purpose="update",
            payload={"contact": self._guarded(body, write)},
        )
        return mapping.contact_from_sage(_record(response))

    # --- invoices -----------------------------------------------------------------------------------

    async def list_invoices(self, query: ListQuery) -> Page[Invoice]:
        return await self._list("sales_invoices", Resource.invoices, query, mapping.invoice_from_sage)

    async def get_invoice(self, record_id: str, *, include_raw: bool = False) -> Invoice:
        item = await self._get(f"/sales_invoices/{_key(record_id)}", "GET /sales_invoices/{key}")
        return mapping.invoice_from_sage(item, include_raw=include_raw)

    async def create_invoice(self, data: InvoiceCreate, write: WriteRequest) -> Invoice:
        self._business()
        ErrorCollector(mapping.invoice_problems(data)).raise_if_any(
            "The invoice cannot be posted to Sage Accounting"
        )
        # Refuse a non-customer before the write (a vendor gets a bare 422 "can't find customer", §10.2), and
        # a taxed line without tax_amount (factcheck §1): one contact read, one tax-rate page only if needed.
        contact, rates = await asyncio.gather(
            self._find(f"/contacts/{_key(data.contact_id)}", "GET /contacts/{key}"),
            self._tax_rates() if mapping.needs_rates(data) else _none(),
        )
        problems = mapping.contact_problems(contact)
        if rates is not None:
            problems += mapping.tax_rate_problems(data, rates)
        ErrorCollector(problems).raise_if_any("The invoice cannot be posted to Sage Accounting")
        payload = mapping.invoice_body(data, derive_guard(write.guard))
        response = await self._write(
            "POST",
            "/sales_invoices",
            label="POST /sales_invoices",
            purpose="create",
            payload=payload,
            renames=INVOICE_RENAMES,
        )
        return mapping.invoice_from_sage(_record(response))

    async def void_invoice(self, record_id: str, data: InvoiceVoid, write: WriteRequest) -> Invoice:
        """§11: ``DELETE /sales_invoices/{key}`` voids; an invoice already void is returned as it is.

        DELETE carries no duplicate guard (factcheck §2), so the ensure is a read first: a retry after an
        unknown outcome finds the invoice void and does not call DELETE again.
        """
        path = f"/sales_invoices/{_key(record_id)}"
        current = mapping.invoice_from_sage(await self._get(path, "GET /sales_invoices/{key}"))
        if current.status == InvoiceStatus.void:
            return current
        errors = ErrorCollector()
        if len(data.reason) > VOID_REASON_MAX:
            errors.add(
                "reason", "too_long", f"Sage Accounting accepts at most {VOID_REASON_MAX} characters here"
            )
        errors.raise_if_any("The invoice cannot be voided in Sage Accounting")
        # §11: void_reason is a query parameter in [SPEC] and a JSON body in [G-inv]: send both.
        query = urlencode({"void_reason": data.reason}, quote_via=quote)
        response = await self._write(
            "DELETE",
            f"{path}?{query}",
            label="DELETE /sales_invoices/{key}",
            purpose="void",
            payload={"void_reason": data.reason},
        )
        if response.status_code == 204 or not response.content:
            # §11 UNCONFIRMED: a DRAFT may be removed outright (204) rather than set to VOID.
            try:
                return await self.get_invoice(record_id)
            except NotFound:
                return current.model_copy(update={"status": InvoiceStatus.void})
        return mapping.invoice_from_sage(_record(response))

    async def validate_invoice(self, data: InvoiceCreate) -> list[Problem]:
        self._business()
        wanted = {line.account_id for line in data.lines}
        contact, rates, ledgers = await asyncio.gather(
            self._find(f"/contacts/{_key(data.contact_id)}", "GET /contacts/{key}"),
            self._tax_rates(),
            self._ledgers(wanted),
        )
        accounts = [(i, line.account_id) for i, line in enumerate(data.lines)]
        return [
            *mapping.invoice_problems(data),
            *mapping.contact_problems(contact),
            *mapping.account_problems(accounts, ledgers, "sales"),
            *mapping.tax_rate_problems(data, rates),
        ]

    # --- journals -----------------------------------------------------------------------------------

    async def list_journals(self, query: ListQuery) -> Page[Journal]:
        return await self._list("journals", Resource.journals, query, mapping.journal_from_sage)

    async def get_journal(self, record_id: str, *, include_raw: bool = False) -> Journal:
        item = await self._get(f"/journals/{_key(record_id)}", "GET /journals/{key}")
        return mapping.journal_from_sage(item, include_raw=include_raw)

    async def create_journal(self, data: JournalCreate, write: WriteRequest) -> Journal:
        self._business()
        ErrorCollector(mapping.journal_body_problems(data)).raise_if_any(
            "The journal cannot be posted to Sage Accounting"
        )
        payload = mapping.journal_body(data, derive_guard(write.guard))
        response = await self._write(
            "POST", "/journals", label="POST /journals", purpose="create", payload=payload
        )
        return mapping.journal_from_sage(_record(response))

    async def validate_journal(self, data: JournalCreate) -> list[Problem]:
        self._business()
        ledgers = await self._ledgers({line.account_id for line in data.lines})
        accounts = [(i, line.account_id) for i, line in enumerate(data.lines)]
        return [
            *mapping.journal_body_problems(data),
            *mapping.account_problems(accounts, ledgers, "journals"),
        ]

    # --- reference data -----------------------------------------------------------------------------

    async def list_accounts(self, query: ListQuery) -> Page[Account]:
        return await self._list("ledger_accounts", Resource.accounts, query, mapping.account_from_sage)

    async def list_tax_rates(self, query: ListQuery) -> Page[TaxRate]:
        return await self._list("tax_rates", Resource.tax_rates, query, mapping.tax_rate_from_sage)

    # --- raw proxy ----------------------------------------------------------------------------------

    async def proxy(
        self, method: str, path: str, *, query: str, headers: Mapping[str, str], body: bytes
    ) -> ProxyResponse:
        method = method.upper()
        relative = path.lstrip("/")
        top = relative.split("/", 1)[0]
        business = self.settings.business_id
        if business is None and top not in UNSCOPED_PATHS:
            business = self._business()
        url = f"{self.app.api_url.rstrip('/')}/{relative}" + (f"?{query}" if query else "")
        forwarded = {name: value for name, value in headers.items() if name.lower() in PROXY_REQUEST_HEADERS}
        reading = method in ("GET", "HEAD")
        response = await self._request(
            method,
            url,
            label=f"{method} /{top}",
            kind="read" if reading else "write",
            retry="read" if reading else "never",
            business=business,
            body=body or None,
            headers=forwarded,
        )
        return ProxyResponse(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type"),
            headers={
                name: response.headers[name] for name in PROXY_RESPONSE_HEADERS if name in response.headers
            },
            upstream_request_id=upstream_request_id(response.headers),
        )

    # --- upstream calls -----------------------------------------------------------------------------

    def _business(self) -> str:
        if not self.settings.business_id:
            raise BusinessSelectionRequired(
                "Select the Sage business of this connection first (PATCH the connection's business_id)"
            )
        return self.settings.business_id

    @staticmethod
    def _guarded(body: Mapping[str, Any], write: WriteRequest) -> dict[str, Any]:
        # factcheck §2: the duplicate guard is `idempotency_id` inside the resource wrapper, kept 7 days.
        return {"idempotency_id": derive_guard(write.guard), **body}

    async def _request(
        self,
        method: str,
        url: str,
        *,
        label: str,
        kind: CallKind,
        retry: RetryMode,
        business: str | None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One API call with fresh tokens; a 401 gets exactly one refresh-and-retry."""
        secrets = await self._secrets()
        response = await self._attempt(
            method,
            url,
            secrets,
            label=label,
            kind=kind,
            retry=retry,
            business=business,
            body=body,
            extra=headers,
        )
        if response.status_code != 401:
            return self._same_business(response, business)
        # §5.3: key on the status only (401 → refresh once → retry). Retrying a write is safe: 401 means
        # the call was not processed.
        secrets = await self._refresh(rejected=secrets)
        response = await self._attempt(
            method,
            url,
            secrets,
            label=label,
            kind=kind,
            retry=retry,
            business=business,
            body=body,
            extra=headers,
        )
        if response.status_code == 401:
            info = upstream_info(response)
            reason = "Sage Accounting answered 401 to a freshly refreshed access token"
            await self.ctx.store.require_reauthorization(reason)
            raise ReauthorizationRequired(f"{reason}; authorize the connection again", upstream=info)
        return self._same_business(response, business)

    @staticmethod
    def _same_business(response: httpx.Response, business: str | None) -> httpx.Response:
        """§3.1: the response's X-Business is the business actually used; another one is never accepted."""
        echoed = response.headers.get("x-business")
        if business is not None and echoed is not None and echoed != business:
            raise UpstreamError(
                "Sage Accounting answered for another business than the connection's",
                upstream=upstream_info(response),
            )
        return response

    async def _attempt(
        self,
        method: str,
        url: str,
        secrets: StoredSecrets,
        *,
        label: str,
        kind: CallKind,
        retry: RetryMode,
        business: str | None,
        body: bytes | None,
        extra: Mapping[str, str] | None,
    ) -> httpx.Response:
        # §1 and [SAMPLE]: JSON both ways; §3.1: "Best practice is to always send a X-Business header".
        headers = {"Accept": "application/json", **(extra or {})}
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        headers["Authorization"] = f"Bearer {secrets.values.get(oauth.ACCESS_TOKEN, '')}"
        if business is not None:
            headers["X-Business"] = business
        request = httpx.Request(method, parsed_url(url), headers=headers, content=body)
        call = UpstreamCall(
            PROVIDER,
            method,
            url,
            kind,
            scope=business,
            label=label,
            request_body=body if kind == "write" else None,
        )
        return await send(self.ctx, call, request, retry=retry, policy=self.retry_policy)

    async def _secrets(self) -> StoredSecrets:
        current = await self.ctx.store.load()
        if oauth.is_fresh(current, _now()):
            return current
        return await self._refresh(rejected=None)

    async def _refresh(self, *, rejected: StoredSecrets | None) -> StoredSecrets:
        """Refresh under the store's lock (reliability-notes §3.5), re-checking inside it.

        ``rejected`` is the secrets whose access token just got a 401 (a forced refresh); None means a
        proactive refresh near expiry. The new secrets are saved before they are returned, so a rotated
        refresh token (§2.3: single use) is durable before the new access token is ever used.
        """
        try:
            async with self.ctx.store.exclusive() as current:
                now = _now()
                if rejected is None and oauth.is_fresh(current, now):
                    return current
                if rejected is not None and (
                    current.version != rejected.version
                    or current.values.get(oauth.ACCESS_TOKEN) != rejected.values.get(oauth.ACCESS_TOKEN)
                ):
                    return current  # another holder refreshed since the 401'd token was loaded
                refresh_token = current.values.get(oauth.REFRESH_TOKEN)
                if not refresh_token:
                    raise _GrantDead("No Sage refresh token is stored for this connection")
                form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
                try:
                    tokens = await oauth.token_call(self.ctx, self.app, form, "POST /token refresh_token")
                except oauth.TokenRejected as exc:
                    if exc.error == "invalid_grant":
                        # §2.3/§2.4: expired (31 days), revoked, reused or superseded refresh token.
                        raise _GrantDead(
                            "Sage rejected the refresh token (invalid_grant)", exc.upstream
                        ) from None
                    raise
                except (UpstreamTimeout, UpstreamUnavailable, RateLimited):
                    # reliability-notes §3.5: a failed or lost refresh answer must not brick the connection.
                    # The stored refresh token is kept (it still works if Sage did not process the call) and
                    # the current access token serves until it really expires.
                    if rejected is None and oauth.still_valid(current, now):
                        logger.warning(
                            "Sage token refresh failed; using the current access token until it expires"
                        )
                        return current
                    raise
                saved = await self.ctx.store.save({**current.values, **tokens.secrets}, tokens.expires_at)
                logger.info("Sage tokens refreshed (connection %s)", self.ctx.connection_id or "-")
                return saved
        except _GrantDead as dead:
            # Outside the lock: the store may need it to record the new status.
            await self.ctx.store.require_reauthorization(dead.reason)
            raise ReauthorizationRequired(
                f"{dead.reason}; authorize the connection again", upstream=dead.upstream
            ) from None

    def _url(self, path: str) -> str:
        # factcheck §5: concatenate, never urljoin (that would drop /v3.1).
        return self.app.api_url.rstrip("/") + path

    async def _call(
        self, method: str, path: str, label: str, *, retry: RetryMode, body: bytes | None = None
    ) -> httpx.Response:
        kind: CallKind = "read" if method == "GET" else "write"
        return await self._request(
            method, self._url(path), label=label, kind=kind, retry=retry, business=self._business(), body=body
        )

    async def _get(self, path: str, label: str) -> Mapping[str, Any]:
        response = await self._call("GET", path, label, retry="read")
        if not response.is_success:
            raise error_for(response, "read")
        return _record(response)

    async def _find(self, path: str, label: str) -> Mapping[str, Any] | None:
        try:
            return await self._get(path, label)
        except NotFound:
            return None

    async def _write(
        self,
        method: str,
        path: str,
        *,
        label: str,
        purpose: Purpose,
        payload: Mapping[str, Any],
        renames: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        # POST/PUT bodies carry idempotency_id, so a lost answer may be re-sent (reliability-notes §2.4).
        retry: RetryMode = "guarded" if method in ("POST", "PUT") else "never"
        response = await self._call(method, path, label, retry=retry, body=dumps(payload))
        if not response.is_success:
            raise error_for(response, purpose, renames)
        return response

    async def _list(
        self,
        collection: str,
        resource: Resource,
        query: ListQuery,
        mapper: Callable[..., T],
    ) -> Page[T]:
        """One upstream call per page: ``attributes`` puts the mapped fields of every record in the list (§4.2,
        no N+1); ``include_raw`` asks for all of them."""
        attributes = "all" if query.include_raw else mapping.LIST_ATTRIBUTES[collection]
        if query.cursor:
            path = decode_cursor(query.cursor, collection)
            # The page the cursor names, with the attributes this call needs (include_raw may differ).
            params = [
                (k, v)
                for k, v in parse_qsl(urlsplit(path).query, keep_blank_values=True)
                if k != "attributes"
            ]
            params.append(("attributes", attributes))
            path = list_path(collection, params)
        else:
            params = [
                ("items_per_page", str(min(max(query.page_size, 1), MAX_PAGE_SIZE))),
                ("attributes", attributes),
                *self._filters(resource, query.filters),
            ]
            if query.updated_since is not None:
                params.append(("updated_or_created_since", since_param(query.updated_since)))
            path = list_path(collection, params)
        response = await self._call("GET", path, f"GET /{collection}", retry="read")
        if not response.is_success:
            raise error_for(response, "read")
        record = None if query.include_raw else mapping.LIST_RECORDS.get(collection)
        items: Sequence[Any]
        if record is not None:
            items, following = typed_items(response, record)
        else:
            items, following = list_items(json_body(response))
        cursor = encode_cursor(next_path(following, self.app.api_url, params)) if following else None
        # Page, not Page[T]: a TypeVar-parametrized class is not kept alive by pydantic's generic cache, so it
        # would be built anew (a class creation) on every call; trusted: the records are the mapping's own.
        records = [mapper(item, include_raw=query.include_raw) for item in items]
        return _PAGE(data=records, next_cursor=cursor)

    @staticmethod
    def _filters(resource: Resource, filters: Mapping[str, str]) -> list[tuple[str, str]]:
        known = FILTERS.get(resource, {})
        errors = ErrorCollector()
        params: list[tuple[str, str]] = []
        for name, value in filters.items():
            upstream = known.get(name)
            allowed = FILTER_VALUES.get(name)
            if upstream is None:
                errors.add(
                    f"filters.{name}",
                    "unsupported_filter",
                    f"Sage Accounting cannot filter {resource} by {name}",
                )
            elif allowed is None:
                params.append((upstream, value))
            elif value in allowed:
                params.append((upstream, allowed[value]))
            else:
                errors.add(f"filters.{name}", "invalid", f"{name} is one of {', '.join(allowed)}")
        errors.raise_if_any("Unsupported list filter")
        return params

    async def _walk(
        self,
        collection: str,
        params: Sequence[tuple[str, str]],
        take: Callable[[list[dict[str, Any]]], bool],
        *,
        scoped: bool = True,
    ) -> None:
        """Feed pages of ``collection`` to ``take`` following ``$next`` (§4.1) until it returns True."""
        path = list_path(collection, params)
        business = self._business() if scoped else None
        for _ in range(MAX_REFERENCE_PAGES):
            response = await self._request(
                "GET",
                self._url(path),
                label=f"GET /{collection}",
                kind="read",
                retry="read",
                business=business,
            )
            if not response.is_success:
                raise error_for(response, "read")
            items, following = list_items(json_body(response))
            if take(items) or following is None:
                return
            path = next_path(following, self.app.api_url, params)

    async def _tax_rates(self) -> dict[str, mapping.TaxRateInfo]:
        """Every tax rate, in pages of 200 with only the attributes validation needs."""
        rates: dict[str, mapping.TaxRateInfo] = {}

        def take(items: list[dict[str, Any]]) -> bool:
            rates.update({str(item["id"]): mapping.tax_rate_info(item) for item in items if item.get("id")})
            return False

        params = [("items_per_page", str(MAX_PAGE_SIZE)), ("attributes", mapping.TAX_RATE_ATTRIBUTES)]
        await self._walk("tax_rates", params, take)
        return rates

    async def _ledgers(self, wanted: set[str]) -> dict[str, mapping.LedgerInfo]:
        """Ledger accounts in pages of 200, stopping as soon as every ``wanted`` one was seen."""
        found: dict[str, mapping.LedgerInfo] = {}

        def take(items: list[dict[str, Any]]) -> bool:
            found.update({str(item["id"]): mapping.ledger_info(item) for item in items if item.get("id")})
            return wanted <= found.keys()

        params = [("items_per_page", str(MAX_PAGE_SIZE)), ("attributes", mapping.LEDGER_ATTRIBUTES)]
        await self._walk("ledger_accounts", params, take)
        return found

    async def _businesses(self) -> list[SageBusiness]:
        """§3.2: ``GET /businesses`` needs no X-Business; its envelope says ``$items_per_page``."""
        businesses: list[SageBusiness] = []

        def take(items: list[dict[str, Any]]) -> bool:
            businesses.extend(
                SageBusiness(id=str(item["id"]), name=item.get("displayed_as") or item.get("name"))
                for item in items
                if item.get("id")
            )
            return False

        await self._walk("businesses", [("items_per_page", str(BUSINESSES_PAGE_SIZE))], take, scoped=False)
        return businesses


async def _none() -> None:
    return None


def _record(response: httpx.Response) -> Mapping[str, Any]:
    body = json_body(response)
    if not isinstance(body, Mapping):
        raise UpstreamError(
            "Sage Accounting answered with an unexpected body", upstream=UpstreamInfo(PROVIDER)
        )
    return body
