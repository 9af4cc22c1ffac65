"""Transport to Sage Intacct: the XML gateway with one shared API session, and REST with a bearer token.

One API session per connection (sage-intacct-wire.md §1.3), shared by every process through the
connection's :class:`~connectors.base.CredentialStore`: a call loads the stored session, renews it under
``store.exclusive()`` when it is about to expire, and re-logs in exactly once when the gateway answers
"Invalid session" — comparing what is stored with what was used, so concurrent callers that all saw the
same dead session log in once between them. The REST bearer token follows the same lock discipline.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from lxml import etree

from connectors.base import CallKind, ConnectorContext, CredentialStore, StoredSecrets, UpstreamCall
from connectors.errors import (
    ConnectorError,
    NotFound,
    Problem,
    RateLimited,
    ReauthorizationRequired,
    UpstreamError,
    UpstreamErrorItem,
    UpstreamInfo,
    UpstreamUnavailable,
    ValidationFailed,
)
from connectors.http import RetryMode, parsed_url, send
from connectors.sage_intacct.config import SageIntacctApp, SageIntacctSettings
from connectors.sage_intacct.rest import (
    RestError,
    TokenResponse,
    load_json,
    parse_rest_errors,
    parse_token_response,
)
from connectors.sage_intacct.xml import (
    AuthBlock,
    FunctionResult,
    Login,
    XmlError,
    XmlResponse,
    build_request,
    element,
    function,
    parse_response,
)

log = logging.getLogger(__name__)

PROVIDER = "sage_intacct"
XML_HEADERS = {"content-type": "application/xml", "accept": "application/xml, text/xml"}

# Secret keys of a connection (CONTRACT §6): the user password is kept to renew the session.
USER_PASSWORD = "user_password"
SESSION_ID = "session_id"
SESSION_ENDPOINT = "session_endpoint"
SESSION_LIFETIME = "session_lifetime"
REST_CLIENT_ID = "rest_client_id"
REST_CLIENT_SECRET = "rest_client_secret"
REST_ACCESS_TOKEN = "rest_access_token"
REST_ACCESS_EXPIRES_AT = "rest_access_token_expires_at"
REST_REFRESH_TOKEN = "rest_refresh_token"
REST_REFRESH_EXPIRES_AT = "rest_refresh_token_expires_at"
LOGIN_REJECTED = "login_rejected_at"
"""Set (ISO time) when Intacct refused the stored password: no further login is attempted until the
connection is re-established, because repeated failed sign-ins can lock the Intacct user out."""
REST_REJECTED = "rest_rejected_at"

DUPLICATE_CONTROLID_ERRORNO = "XL03000004"
"""The error for a repeated function controlid under ``uniqueid=true`` is undocumented (§1.5, §7,
factcheck.md §15). This errorno is one guess; the simulator's default answers ``BL01001973`` (the errorno of
ordinary business errors too), so :func:`is_duplicate_controlid` recognises a duplicate by its wording."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def renewal_margin(lifetime: float | None) -> dt.timedelta:
    """Renew this long before the stored expiry: a fifth of the lifetime, at most five minutes
    (reliability-notes.md §3.5). Without a known lifetime, one minute."""
    if not lifetime or lifetime <= 0:
        return dt.timedelta(seconds=60)
    return dt.timedelta(seconds=min(300.0, lifetime / 5))


def session_expiry(auth: AuthBlock | None) -> tuple[dt.datetime | None, float | None]:
    """The session's expiry and lifetime from an ``authentication`` block.

    ``sessiontimeout`` is absolute and slides on every call (§1.3, factcheck #11). The lifetime is
    ``sessiontimeout - sessiontimestamp`` (both from the server clock), and the expiry is taken as local
    now + lifetime so a skewed local clock cannot make a live session look expired (or the reverse).
    """
    if auth is None or auth.sessiontimeout is None:
        return None, None
    if auth.sessiontimestamp is not None:
        lifetime = (auth.sessiontimeout - auth.sessiontimestamp).total_seconds()
        if lifetime > 0:
            return now() + dt.timedelta(seconds=lifetime), lifetime
    remaining = (auth.sessiontimeout - now()).total_seconds()
    return auth.sessiontimeout, remaining if remaining > 0 else None


def trusted_endpoint(endpoint: str | None, xml_url: str) -> str:
    """The session endpoint to use (§1.1): the one ``getAPISession`` returned when it is the configured
    gateway's origin or an https ``*.intacct.com`` host (the official SDKs refuse any other host), so a
    tampered answer cannot send the session id elsewhere. Otherwise the configured URL."""
    if not endpoint:
        return xml_url
    given, configured = urlsplit(endpoint), urlsplit(xml_url)
    if (given.scheme, given.netloc) == (configured.scheme, configured.netloc):
        return endpoint
    host = given.hostname or ""
    if given.scheme == "https" and (host == "intacct.com" or host.endswith(".intacct.com")):
        return endpoint
    log.warning("ignoring an untrusted Sage Intacct session endpoint host %r", host)
    return xml_url


# --- error classification ---------------------------------------------------------------------------


def upstream_info(
    status: int | None, request_id: str | None, errors: Sequence[XmlError] = ()
) -> UpstreamInfo:
    return UpstreamInfo(
        PROVIDER,
        status,
        request_id,
        tuple(UpstreamErrorItem(e.errorno, e.message) for e in errors),
    )


def is_duplicate_controlid(result: FunctionResult) -> bool:
    """The function's controlid was already executed under ``uniqueid=true`` (factcheck #15): the first
    attempt committed. The errorno is undocumented, so the wording is checked too."""
    for error in result.errors:
        if error.errorno == DUPLICATE_CONTROLID_ERRORNO:
            return True
        text = error.text.lower()
        if ("control id" in text or "controlid" in text) and any(
            word in text for word in ("already", "duplicate", "previously", "unique")
        ):
            return True
    return False


_OUR_BUGS = ("query failed", "ws", "invalid fields list")
_NOT_FOUND = ("not found", "cannot find", "could not find", "does not exist", "no such", "not exist")
_VALIDATION = ("invalid", "required", "must", "already exists", "duplicate", "not valid", "cannot be")


def function_error(
    result: FunctionResult, *, status: int | None, request_id: str | None, what: str
) -> ConnectorError:
    """A failed ``<result>`` as the matching :class:`ConnectorError` (§1.5 table)."""
    errors = result.errors
    info = upstream_info(status, request_id, errors)
    summary = "; ".join(f"{e.errorno}: {e.message}" if e.message else e.errorno for e in errors) or "failed"
    detail = f"Sage Intacct refused {what}: {summary}"
    numbers = [e.errorno.lower() for e in errors]
    text = " ".join(e.text for e in errors).lower()
    if any(n.startswith(_OUR_BUGS) for n in numbers) or result.status == "aborted":
        return UpstreamError(detail, upstream=info)
    if any(word in text for word in _NOT_FOUND):
        return NotFound(detail, upstream=info)
    if any(n.startswith(("bl", "pl")) for n in numbers) or any(word in text for word in _VALIDATION):
        problems = [Problem("request", "upstream_validation", e.message or e.errorno) for e in errors]
        return ValidationFailed(detail, upstream=info, problems=problems)
    return UpstreamError(detail, upstream=info)


def _sender_not_authorized(errors: Sequence[XmlError]) -> bool:
    # "Invalid Web Services Authorization": the company has not authorized the gateway's sender (§1.5).
    text = " ".join(e.text for e in errors).lower()
    return "web services authorization" in text or "not authorized to make web services" in text


def control_error(parsed: XmlResponse, status: int | None) -> ConnectorError:
    errors = parsed.control_errors
    info = upstream_info(status, parsed.control_id, errors)
    if any(e.errorno == "GW-0010" for e in errors):
        return RateLimited(
            "Sage Intacct is rate limiting this sender", policy="sage-intacct", retry_after=8.0
        )
    summary = "; ".join(f"{e.errorno}: {e.message}" for e in errors) or "no detail"
    if any(e.errorno == "XL03000006" for e in errors):
        return UpstreamError(
            "Sage Intacct rejected the gateway's Web Services sender id or password: check "
            "LEDGERBRIDGE_SAGE_INTACCT_SENDER_ID and LEDGERBRIDGE_SAGE_INTACCT_SENDER_PASSWORD",
            upstream=info,
        )
    return UpstreamError(f"Sage Intacct refused the request envelope ({summary})", upstream=info)


class LoginRejected(Exception):
    """The user's login (or, for REST, the client credentials) was refused: never retried."""

    def __init__(self, detail: str, info: UpstreamInfo) -> None:
        super().__init__(detail)
        self.detail = detail
        self.info = info


def _is_xml(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "").lower()
    return "xml" in content_type or response.content.lstrip().startswith(b"<")


def parse_http(response: httpx.Response) -> XmlResponse:
    """The XML of a gateway answer. 4xx bodies are parsed when they are XML, as the SDKs do (§1.1)."""
    if response.is_success or (400 <= response.status_code < 500 and _is_xml(response)):
        return parse_response(response.content)
    info = UpstreamInfo(PROVIDER, response.status_code)
    if response.status_code >= 500:
        raise UpstreamUnavailable(f"Sage Intacct answered {response.status_code}", upstream=info)
    raise UpstreamError(f"Sage Intacct answered {response.status_code}", upstream=info)


@dataclass(frozen=True)
class Session:
    """A fresh API session from ``getAPISession`` (§1.3)."""

    session_id: str
    endpoint: str
    locationid: str | None
    expires_at: dt.datetime | None
    lifetime: float | None

    def __repr__(self) -> str:
        return f"Session(endpoint={self.endpoint!r}, locationid={self.locationid!r}, expires_at={self.expires_at})"


async def open_session(ctx: ConnectorContext, app: SageIntacctApp, login: Login) -> Session:
    """``getAPISession`` with ``<login>`` (isolated in its own request, as the docs ask, §1.3).

    Raises :class:`LoginRejected` when the user/company/password (or entity) is refused.
    """
    controlid = str(uuid.uuid4())
    fn = [function(controlid, element("getAPISession"))]
    common: dict[str, Any] = {
        "sender_id": app.sender_id,
        "sender_password": app.sender_password.get_secret_value(),
        "control_id": controlid,
        "uniqueid": False,
        "functions": fn,
        "login": login,
    }
    call = UpstreamCall(
        provider=PROVIDER,
        method="POST",
        url=app.xml_url,
        kind="auth",
        scope=login.companyid,
        label="XML getAPISession",
    )
    request = httpx.Request("POST", app.xml_url, content=build_request(**common), headers=XML_HEADERS)
    # getAPISession writes nothing: safe to repeat on 429/5xx.
    response = await send(ctx, call, request, retry="read")
    parsed = parse_http(response)
    if not parsed.control_ok:
        if any(e.errorno == "XMLGW_JPP0002" for e in parsed.control_errors):
            # HTTP 401 "Sign-in information is incorrect" at the gateway layer (§1.1).
            raise LoginRejected(
                "Sage Intacct rejected the sign-in information",
                upstream_info(response.status_code, parsed.control_id, parsed.control_errors),
            )
        raise control_error(parsed, response.status_code)
    if not parsed.auth_ok:
        info = upstream_info(response.status_code, parsed.control_id, parsed.auth_errors)
        if _sender_not_authorized(parsed.auth_errors):
            raise UpstreamError(
                "The company has not authorized the gateway's Web Services sender id; a company "
                "administrator must add it under Company > Security",
                upstream=info,
            )
        raise LoginRejected("Sage Intacct rejected the user id, company id or password", info)
    result = parsed.results[0] if parsed.results else None
    if result is None or not result.ok or not result.records:
        if result is not None and result.errors:
            raise function_error(
                result, status=response.status_code, request_id=parsed.control_id, what="getAPISession"
            )
        raise UpstreamError(
            "Sage Intacct returned no API session", upstream=upstream_info(200, parsed.control_id)
        )
    api = result.records[0]
    session_id = str(api.get("sessionid") or "")
    if not session_id:
        raise UpstreamError(
            "Sage Intacct returned an empty session id", upstream=upstream_info(200, parsed.control_id)
        )
    expires_at, lifetime = session_expiry(parsed.auth)
    return Session(
        session_id=session_id,
        endpoint=trusted_endpoint(str(api.get("endpoint") or ""), app.xml_url),
        locationid=str(api.get("locationid") or "") or None,
        expires_at=expires_at,
        lifetime=lifetime,
    )


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _from_iso(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def token_values(token: TokenResponse, *, issued: dt.datetime) -> dict[str, str]:
    """The stored form of a REST token answer (expiries as ISO strings, CONTRACT §6)."""
    values = {REST_ACCESS_TOKEN: token.access_token}
    if token.expires_in:
        values[REST_ACCESS_EXPIRES_AT] = _iso(issued + dt.timedelta(seconds=token.expires_in))
    if token.refresh_token:
        values[REST_REFRESH_TOKEN] = token.refresh_token
        if token.refresh_expires_in:
            values[REST_REFRESH_EXPIRES_AT] = _iso(issued + dt.timedelta(seconds=token.refresh_expires_in))
    return values


def rest_username(settings: SageIntacctSettings) -> str:
    # client_credentials names the user as userId@companyId[|entityId] (§3.1, third-party usage).
    name = f"{settings.user_id}@{settings.company_id}"
    return f"{name}|{settings.entity_id}" if settings.entity_id else name


async def request_token(
    ctx: ConnectorContext,
    app: SageIntacctApp,
    settings: SageIntacctSettings,
    form: Mapping[str, str],
    *,
    retry: RetryMode,
) -> TokenResponse:
    """POST the token endpoint (§3.1: ``{rest_url}/oauth2/token``, form-encoded)."""
    url = app.rest_url.rstrip("/") + "/oauth2/token"
    call = UpstreamCall(
        provider=PROVIDER,
        method="POST",
        url=url,
        kind="auth",
        scope=settings.company_id,
        label="REST POST /oauth2/token",
    )
    request = httpx.Request("POST", url, data=dict(form), headers={"accept": "application/json"})
    response = await send(ctx, call, request, retry=retry)
    payload = load_json(response.content) if response.content else None
    if response.status_code in (400, 401, 403):
        items = tuple(UpstreamErrorItem(e.code, e.message) for e in parse_rest_errors(payload))
        if not items and isinstance(payload, dict) and isinstance(payload.get("error"), str):
            # RFC 6749 §5.2 shape: {"error": "invalid_grant", "error_description": "…"}.
            items = (UpstreamErrorItem(payload["error"], str(payload.get("error_description") or "")),)
        info = UpstreamInfo(PROVIDER, response.status_code, None, items)
        raise LoginRejected("Sage Intacct rejected the REST client credentials", info)
    if not response.is_success:
        raise UpstreamError(
            f"Sage Intacct's token endpoint answered {response.status_code}",
            upstream=UpstreamInfo(PROVIDER, response.status_code),
        )
    return parse_token_response(payload)


def client_credentials_form(
    settings: SageIntacctSettings, client_id: str, client_secret: str
) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
        "username": rest_username(settings),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dump_json(payload: Any) -> bytes:
    return json.dumps(payload, default=_json_default, separators=(",", ":")).encode()


@dataclass
class Exchange:
    """One XML round trip as the caller needs it: the HTTP answer, its parse and the secrets used."""

    response: httpx.Response
    parsed: XmlResponse
    secrets: StoredSecrets


class IntacctClient:
    """The connection's XML session and REST token, shared across processes through the store."""

    def __init__(self, ctx: ConnectorContext, app: SageIntacctApp, settings: SageIntacctSettings) -> None:
        self.ctx = ctx
        self.app = app
        self.settings = settings

    @property
    def store(self) -> CredentialStore:
        return self.ctx.store

    # --- XML session ---------------------------------------------------------------------------------

    def _login(self, password: str) -> Login:
        return Login(
            userid=self.settings.user_id,
            companyid=self.settings.company_id,
            password=password,
            locationid=self.settings.entity_id,
        )

    @staticmethod
    def _lifetime(secrets: StoredSecrets) -> float | None:
        try:
            return float(secrets.values.get(SESSION_LIFETIME, ""))
        except ValueError:
            return None

    def _session_fresh(self, secrets: StoredSecrets) -> bool:
        if not secrets.values.get(SESSION_ID) or not secrets.values.get(SESSION_ENDPOINT):
            return False
        if secrets.expires_at is None:
            return True  # no sessiontimeout seen: rely on the "Invalid session" retry
        return secrets.expires_at - now() > renewal_margin(self._lifetime(secrets))

    async def session(self) -> StoredSecrets:
        """The stored session, renewed first when it expires within the margin."""
        current = await self.store.load()
        if self._session_fresh(current):
            return current
        return await self.renew(stale=None)

    async def renew(self, stale: StoredSecrets | None) -> StoredSecrets:
        """Log in again under the store's lock, unless another holder already did.

        ``stale`` is the secrets whose session the gateway refused (None for a proactive renewal). Inside
        the lock the store is re-read: a different ``version`` with a different session id means another
        caller (any process) renewed meanwhile, and that session is used instead of logging in again.
        """
        reason: str | None = None
        info: UpstreamInfo | None = None
        async with self.store.exclusive() as current:
            if stale is None:
                if self._session_fresh(current):
                    return current
            elif (
                current.version != stale.version
                and current.values.get(SESSION_ID)
                and current.values.get(SESSION_ID) != stale.values.get(SESSION_ID)
            ):
                return current
            password = current.values.get(USER_PASSWORD)
            if current.values.get(LOGIN_REJECTED):
                reason = "Sage Intacct rejected the stored user credentials"
            elif not password:
                reason = "The stored Sage Intacct credentials are incomplete"
            else:
                try:
                    session = await open_session(self.ctx, self.app, self._login(password))
                except LoginRejected as exc:
                    reason = "Sage Intacct rejected the stored user credentials"
                    info = exc.info
                    # Remembered in the store so that no other caller, in any process, tries again.
                    await self.store.save({**current.values, LOGIN_REJECTED: _iso(now())}, current.expires_at)
                else:
                    values = dict(current.values)
                    values[SESSION_ID] = session.session_id
                    values[SESSION_ENDPOINT] = session.endpoint
                    if session.lifetime:
                        values[SESSION_LIFETIME] = str(int(session.lifetime))
                    # Durable before use: another process may pick it up as soon as it is saved.
                    return await self.store.save(values, session.expires_at)
        await self.store.require_reauthorization(reason)
        raise ReauthorizationRequired(
            f"{reason}: reconnect the Sage Intacct connection with a valid user password", upstream=info
        )

    async def _slide(self, used: StoredSecrets, auth: AuthBlock | None) -> None:
        """Persist the session's slid expiry (§1.3) — but only when it moved by more than a quarter of
        the session lifetime since it was last stored. Saving on every call would put a locked write on
        the hot path of every request for no benefit: the stored expiry only drives proactive renewal,
        which already keeps a margin, and an expiry that lags by at most a quarter of the lifetime merely
        makes that renewal a little early after a long idle stretch."""
        expires_at, lifetime = session_expiry(auth)
        if expires_at is None:
            return
        life = lifetime or self._lifetime(used) or 0.0
        threshold = dt.timedelta(seconds=life / 4 if life > 0 else 300)
        if used.expires_at is not None and expires_at - used.expires_at <= threshold:
            return
        async with self.store.exclusive() as current:
            if current.values.get(SESSION_ID) != used.values.get(SESSION_ID):
                return  # renewed meanwhile: that session's expiry is the one stored
            if current.expires_at is not None and expires_at - current.expires_at <= threshold:
                return
            await self.store.save(dict(current.values), expires_at)

    async def _post(
        self,
        secrets: StoredSecrets,
        functions: Sequence[etree._Element],
        *,
        kind: CallKind,
        label: str,
        uniqueid: bool,
        retry: RetryMode,
    ) -> tuple[httpx.Response, XmlResponse]:
        control_id = str(uuid.uuid4())
        url = trusted_endpoint(secrets.values.get(SESSION_ENDPOINT), self.app.xml_url)
        common: dict[str, Any] = {
            "sender_id": self.app.sender_id,
            "sender_password": self.app.sender_password.get_secret_value(),
            "control_id": control_id,
            "uniqueid": uniqueid,
            "session_id": secrets.values[SESSION_ID],
        }
        body = build_request(functions=[copy.deepcopy(f) for f in functions], **common)
        logged = None
        if kind == "write":
            # The gateway redacts <password>/<sessionid> too; the log copy never holds them at all.
            logged = build_request(functions=[copy.deepcopy(f) for f in functions], redact=True, **common)
        call = UpstreamCall(
            provider=PROVIDER,
            method="POST",
            url=url,
            kind=kind,
            scope=self.settings.company_id,
            label=label,
            request_body=logged,
        )
        request = httpx.Request("POST", parsed_url(url), content=body, headers=XML_HEADERS)
        response = await send(self.ctx, call, request, retry=retry)
        return response, parse_http(response)

    @staticmethod
    def _session_refused(parsed: XmlResponse) -> bool:
        return parsed.control_ok and not parsed.auth_ok and not _sender_not_authorized(parsed.auth_errors)

    async def exchange(
        self,
        functions: Sequence[etree._Element],
        *,
        kind: CallKind,
        label: str,
        uniqueid: bool = False,
        retry: RetryMode = "read",
    ) -> Exchange:
        """One XML request on the connection's session; an "Invalid session" answer renews it once.

        Re-sending after an authentication failure is safe even for writes: the gateway runs no function
        when authentication fails (§1.5).
        """
        secrets = await self.session()
        response, parsed = await self._post(
            secrets, functions, kind=kind, label=label, uniqueid=uniqueid, retry=retry
        )
        if self._session_refused(parsed):
            log.info("Sage Intacct refused the API session; renewing it once")
            secrets = await self.renew(stale=secrets)
            response, parsed = await self._post(
                secrets, functions, kind=kind, label=label, uniqueid=uniqueid, retry=retry
            )
        if parsed.control_ok and parsed.auth_ok:
            await self._slide(secrets, parsed.auth)
        return Exchange(response, parsed, secrets)

    async def call(
        self,
        functions: Sequence[etree._Element],
        *,
        kind: CallKind,
        label: str,
        uniqueid: bool = False,
        retry: RetryMode = "read",
    ) -> XmlResponse:
        """Like :meth:`exchange`, raising for control- and authentication-level failures."""
        result = await self.exchange(functions, kind=kind, label=label, uniqueid=uniqueid, retry=retry)
        parsed, status = result.parsed, result.response.status_code
        if not parsed.control_ok:
            raise control_error(parsed, status)
        if not parsed.auth_ok:
            info = upstream_info(status, parsed.control_id, parsed.auth_errors)
            if _sender_not_authorized(parsed.auth_errors):
                raise UpstreamError(
                    "The company has not authorized the gateway's Web Services sender id", upstream=info
                )
            # Nothing ran (authentication failed before any function): a transient refusal, not a final answer.
            raise UpstreamUnavailable("Sage Intacct refused the renewed API session", upstream=info)
        if len(parsed.results) != len(functions):
            raise UpstreamError(
                f"Sage Intacct answered {len(parsed.results)} results to {len(functions)} functions",
                upstream=upstream_info(status, parsed.control_id),
            )
        return parsed

    # --- REST bearer token ---------------------------------------------------------------------------

    @staticmethod
    def _token_fresh(secrets: StoredSecrets) -> bool:
        if not secrets.values.get(REST_ACCESS_TOKEN):
            return False
        expires_at = _from_iso(secrets.values.get(REST_ACCESS_EXPIRES_AT))
        if expires_at is None:
            return True
        return expires_at - now() > dt.timedelta(seconds=60)

    async def token(self) -> StoredSecrets:
        current = await self.store.load()
        if self._token_fresh(current):
            return current
        return await self.refresh_token(stale=None)

    async def refresh_token(self, stale: StoredSecrets | None) -> StoredSecrets:
        """A new bearer token under the store's lock (reliability-notes.md §3.5): the refresh grant when a
        refresh token is stored, else (or when it is refused) the client-credentials grant again."""
        reason: str | None = None
        info: UpstreamInfo | None = None
        async with self.store.exclusive() as current:
            if stale is None:
                if self._token_fresh(current):
                    return current
            elif current.values.get(REST_ACCESS_TOKEN) != stale.values.get(REST_ACCESS_TOKEN):
                return current
            client_id = current.values.get(REST_CLIENT_ID)
            client_secret = current.values.get(REST_CLIENT_SECRET)
            if current.values.get(REST_REJECTED):
                reason = "Sage Intacct rejected the stored REST client credentials"
            elif not client_id or not client_secret:
                reason = "The connection has no Sage Intacct REST client credentials"
            else:
                issued = now()
                token: TokenResponse | None = None
                refresh = current.values.get(REST_REFRESH_TOKEN)
                if refresh:
                    form = {
                        "grant_type": "refresh_token",
                        "refresh_token": refresh,
                        "client_id": client_id,
                        "client_secret": client_secret,
                    }
                    try:
                        # A lost answer may have rotated the refresh token: never re-sent blindly;
                        # client credentials below recover either way.
                        token = await request_token(self.ctx, self.app, self.settings, form, retry="never")
                    except (LoginRejected, ConnectorError):
                        token = None
                if token is None:
                    form = client_credentials_form(self.settings, client_id, client_secret)
                    try:
                        token = await request_token(self.ctx, self.app, self.settings, form, retry="read")
                    except LoginRejected as exc:
                        reason = "Sage Intacct rejected the stored REST client credentials"
                        info = exc.info
                        await self.store.save(
                            {**current.values, REST_REJECTED: _iso(now())}, current.expires_at
                        )
                if token is not None:
                    # A new expiry replaces the old one; a refresh token is kept unless rotated.
                    stale_keys = {REST_ACCESS_EXPIRES_AT}
                    if token.refresh_token:
                        stale_keys.add(REST_REFRESH_EXPIRES_AT)
                    values = {k: v for k, v in current.values.items() if k not in stale_keys}
                    values.update(token_values(token, issued=issued))
                    return await self.store.save(values, current.expires_at)
        await self.store.require_reauthorization(reason or "REST credentials refused")
        raise ReauthorizationRequired(
            f"{reason}: reconnect the Sage Intacct connection with valid REST credentials", upstream=info
        )

    def _rest_headers(self, token: str, *, has_body: bool) -> dict[str, str]:
        headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
        if has_body:
            headers["content-type"] = "application/json"
        if self.settings.entity_id:
            # Entity scope of a multi-entity company (§3.1, third-party usage of this header).
            headers["x-ia-api-param-entity"] = self.settings.entity_id
        return headers

    async def rest(
        self,
        method: str,
        path: str,
        *,
        kind: CallKind,
        retry: RetryMode,
        json_body: Any = None,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        label: str | None = None,
    ) -> httpx.Response:
        """One REST call with the bearer token; a 401 refreshes the token once and retries."""
        url = self.app.rest_url.rstrip("/") + "/" + path.lstrip("/")
        if query:
            url = f"{url}?{query}"
        content = dump_json(json_body) if json_body is not None else body
        secrets = await self.token()
        for attempt in (1, 2):
            request_headers = dict(headers or {})
            request_headers.update(
                self._rest_headers(secrets.values[REST_ACCESS_TOKEN], has_body=content is not None)
            )
            request = httpx.Request(
                method, parsed_url(url), params=params, content=content, headers=request_headers
            )
            call = UpstreamCall(
                provider=PROVIDER,
                method=method,
                url=url,
                kind=kind,
                scope=self.settings.company_id,
                label=label or f"REST {method} /{path.lstrip('/')}",
                request_body=content if kind == "write" else None,
            )
            response = await send(self.ctx, call, request, retry=retry)
            if response.status_code == 401 and attempt == 1:
                secrets = await self.refresh_token(stale=secrets)
                continue
            return response
        raise AssertionError("unreachable")


def rest_error(response: httpx.Response, what: str, payload: Any = None) -> ConnectorError:
    """A REST failure as the matching :class:`ConnectorError` (§3.3 status codes)."""
    if payload is None and response.content:
        try:
            payload = load_json(response.content)
        except UpstreamError:
            payload = None
    errors: list[RestError] = parse_rest_errors(payload)
    info = UpstreamInfo(
        PROVIDER,
        response.status_code,
        response.headers.get("ia-request-id") or response.headers.get("x-request-id"),
        tuple(UpstreamErrorItem(e.code, e.message) for e in errors),
    )
    summary = "; ".join(f"{e.code}: {e.message}" for e in errors) or f"HTTP {response.status_code}"
    detail = f"Sage Intacct refused {what}: {summary}"
    if response.status_code == 404:
        return NotFound(detail, upstream=info)
    if response.status_code in (400, 409, 422):
        problems = [Problem(e.target or "request", "upstream_validation", e.message) for e in errors]
        return ValidationFailed(detail, upstream=info, problems=problems)
    if response.status_code >= 500:
        return UpstreamUnavailable(detail, upstream=info)
    return UpstreamError(detail, upstream=info)
