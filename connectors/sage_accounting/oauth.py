"""OAuth 2.0 authorization-code flow of Sage Accounting (sage-accounting-wire.md §2).

Pure helpers plus the one token-endpoint call. Secrets (client secret, tokens) never reach an exception
message, a log line or an :class:`~connectors.base.UpstreamCall` body.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from connectors.base import ConnectorContext, StoredSecrets, TokenSet, UpstreamCall
from connectors.errors import UpstreamError, UpstreamInfo
from connectors.http import RetryPolicy, send, upstream_request_id
from connectors.sage_accounting.config import SageAccountingApp
from connectors.sage_accounting.wire import PROVIDER, json_body

ACCESS_TOKEN = "access_token"
REFRESH_TOKEN = "refresh_token"
TOKEN_LIFETIME = "token_lifetime"
REFRESH_TOKEN_EXPIRES_AT = "refresh_token_expires_at"

DEFAULT_LIFETIME = 300  # §2.2: expires_in is 300 s; used only when a response omits it
MIN_MARGIN = 30.0
MAX_MARGIN = 300.0

# One retry of the token call with the *same* refresh token: reliability-notes §3.5 ("lost response:
# retry once with the old refresh token"); a rotated-and-lost token then answers invalid_grant.
TOKEN_POLICY = RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=1.0, max_retry_after=5.0)

_COUNTRY_PREFIX = re.compile(r"^([A-Za-z]{2})/")


class TokenRejected(UpstreamError):
    """The token endpoint refused a grant (``error`` of RFC 6749 §5.2; Sage §2.4)."""

    def __init__(self, error: str, upstream: UpstreamInfo) -> None:
        super().__init__(f"The Sage token endpoint refused the grant ({error})", upstream=upstream)
        self.error = error


def authorization_url(app: SageAccountingApp, *, redirect_uri: str, state: str, code_challenge: str) -> str:
    """§2.1: the configured URL already carries ``?filter=apiv3.1``; our parameters are merged into it."""
    split = urlsplit(app.authorize_url)
    ours = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": redirect_uri,
        "scope": app.scope,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    kept = [(k, v) for k, v in parse_qsl(split.query, keep_blank_values=True) if k not in ours]
    query = urlencode([*kept, *ours.items()])
    return urlunsplit((split.scheme, split.netloc, split.path, query, split.fragment))


def country_of_code(code: str) -> str | None:
    """§2.1: the authorization code carries the region prefix (``GB/12abc…``)."""
    found = _COUNTRY_PREFIX.match(code)
    return found.group(1).upper() if found else None


def margin(lifetime: float) -> float:
    """Refresh this long before expiry: min(300 s, 20 % of the lifetime), at least 30 s.

    reliability-notes §3.5; a fixed margin either refreshes 5-minute Sage tokens on every call or too late.
    """
    return max(MIN_MARGIN, min(MAX_MARGIN, 0.2 * lifetime))


def lifetime_of(secrets: StoredSecrets) -> float:
    try:
        return float(secrets.values.get(TOKEN_LIFETIME, DEFAULT_LIFETIME))
    except ValueError:
        return float(DEFAULT_LIFETIME)


def seconds_left(secrets: StoredSecrets, now: dt.datetime) -> float | None:
    """Seconds until the access token expires (None: unknown expiry, or no token at all → -inf)."""
    if not secrets.values.get(ACCESS_TOKEN):
        return float("-inf")
    expires = secrets.expires_at
    if expires is None:
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)  # a store that keeps naive UTC
    return (expires - now).total_seconds()


def is_fresh(secrets: StoredSecrets, now: dt.datetime) -> bool:
    """Usable without a refresh: an access token that is not within the margin of its expiry."""
    left = seconds_left(secrets, now)
    return left is None or left > margin(lifetime_of(secrets))


def still_valid(secrets: StoredSecrets, now: dt.datetime, slack: float = 5.0) -> bool:
    """The access token has not expired yet (it may be inside the refresh margin)."""
    left = seconds_left(secrets, now)
    return left is None or left > slack


def token_set(body: Mapping[str, Any], now: dt.datetime) -> TokenSet:
    """§2.2 token response → secrets (both tokens, lifetimes) and the access token's expiry."""
    access = body.get(ACCESS_TOKEN)
    if not isinstance(access, str) or not access:
        raise UpstreamError(
            "The Sage token endpoint answered without an access token", upstream=UpstreamInfo(PROVIDER)
        )
    lifetime = body.get("expires_in")
    seconds = (
        int(lifetime)
        if isinstance(lifetime, int | float | str) and str(lifetime).isdigit()
        else DEFAULT_LIFETIME
    )
    secrets = {ACCESS_TOKEN: access, TOKEN_LIFETIME: str(seconds)}
    refresh = body.get(REFRESH_TOKEN)
    if isinstance(refresh, str) and refresh:
        secrets[REFRESH_TOKEN] = refresh
    refresh_life = body.get("refresh_token_expires_in")
    if isinstance(refresh_life, int) and refresh_life > 0:
        secrets[REFRESH_TOKEN_EXPIRES_AT] = (now + dt.timedelta(seconds=refresh_life)).isoformat()
    return TokenSet(secrets=secrets, expires_at=now + dt.timedelta(seconds=seconds))


async def token_call(
    ctx: ConnectorContext, app: SageAccountingApp, form: Mapping[str, str], label: str
) -> TokenSet:
    """POST the token endpoint (form-encoded, client credentials in the body as in §2.2/§2.3).

    Raises :class:`TokenRejected` for an RFC 6749 error answer, :class:`UpstreamError` for anything else
    unexpected; transport failures surface from :func:`send` (timeouts, 5xx, 429) untouched.
    """
    content = urlencode(
        {**form, "client_id": app.client_id, "client_secret": app.client_secret.get_secret_value()}
    ).encode()
    request = httpx.Request(
        "POST",
        app.token_url,
        content=content,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    # The body carries the client secret and a token: it is never handed to the gate (request_body=None).
    call = UpstreamCall(PROVIDER, "POST", app.token_url, "auth", label=label)
    response = await send(ctx, call, request, retry="read", policy=TOKEN_POLICY)
    body = json_body(response)
    if response.is_success and isinstance(body, Mapping):
        return token_set(body, dt.datetime.now(dt.UTC))
    info = UpstreamInfo(PROVIDER, response.status_code, upstream_request_id(response.headers))
    error = body.get("error") if isinstance(body, Mapping) else None
    if response.status_code in (400, 401) and isinstance(error, str) and error:
        raise TokenRejected(error, info)
    raise UpstreamError(f"The Sage token endpoint answered {response.status_code}", upstream=info)
