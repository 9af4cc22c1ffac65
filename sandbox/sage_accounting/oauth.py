"""The OAuth 2.0 authorization server of sage-accounting-wire.md §2 (authorization-code flow only).

Pure state and decisions; the HTTP glue lives in ``app.py``. Every method takes ``now`` so the simulator
clock (which tests can advance) drives every expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlencode, urlsplit

from .config import SimConfig

KID = "3p_elIpgBCpcGQbJs4eTLYsagPV45gMiSTbtI_IeqO0="  # §2.2: kid of the doc's sample token
SCOPES = ("full_access", "readonly")  # §2.1


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    user: str
    scope: str
    challenge: str | None
    method: str
    expires: float
    used: bool = False


@dataclass
class AccessToken:
    client_id: str
    user: str
    scope: str
    expires: float
    family: str


@dataclass
class RefreshToken:
    client_id: str
    user: str
    scope: str
    expires: float
    family: str
    state: Literal["active", "used", "revoked"] = "active"


@dataclass
class OAuthReply:
    status: int
    body: dict[str, Any]


class OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description

    def reply(self) -> OAuthReply:
        # §2.4 [G-bp]: the token endpoint answers 400 for invalid_client as well as invalid_grant.
        return OAuthReply(400, {"error": self.error, "error_description": self.description})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt_like(claims: dict[str, Any]) -> str:
    """A token shaped like Sage's RS512 JWTs (§2.2); clients must treat it as opaque, so it is not signed."""
    header = _b64url(json.dumps({"alg": "RS512", "kid": KID}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(256))}"


@dataclass
class OAuthState:
    config: SimConfig
    codes: dict[str, AuthCode] = field(default_factory=dict)
    access: dict[str, AccessToken] = field(default_factory=dict)
    refresh: dict[str, RefreshToken] = field(default_factory=dict)
    families: dict[str, list[str]] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------- authorize

    def redirect_allowed(self, uri: str) -> bool:
        if self.config.redirect_uris is not None:
            # §2.1 [G-oauthts]: must be a registered URI, matched exactly and case-sensitively.
            return uri in self.config.redirect_uris
        parts = urlsplit(uri)
        return parts.scheme in ("http", "https") and bool(parts.netloc)

    def new_code(
        self,
        *,
        client_id: str,
        redirect_uri: str,
        user: str,
        scope: str,
        challenge: str | None,
        method: str,
        now: float,
    ) -> str:
        # §2.1: the code carries a region prefix, "GB/…" (URL-encoded GB%2F… in the callback).
        code = f"GB/{secrets.token_hex(16)}"
        self.codes[code] = AuthCode(
            client_id, redirect_uri, user, scope, challenge, method, now + self.config.code_ttl
        )
        return code

    @staticmethod
    def callback_url(redirect_uri: str, params: dict[str, str]) -> str:
        sep = "&" if urlsplit(redirect_uri).query else "?"
        return f"{redirect_uri}{sep}{urlencode(params)}"

    # ------------------------------------------------------------------------------------- client auth

    def authenticate_client(self, form: dict[str, str], authorization: str | None) -> str:
        """Client credentials in the body or via HTTP Basic (§2.2 [G-flow])."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError("invalid_client", "Malformed HTTP Basic credentials.") from None
            basic_id, _, basic_secret = decoded.partition(":")
            # RFC 6749 §2.3.1 form-encodes both parts before base64; plain values decode to themselves.
            client_id, secret = unquote(basic_id), unquote(basic_secret)
        if not client_id or client_id not in self.config.clients:
            raise OAuthError("invalid_client", "Client authentication failed: unknown client.")
        if not secrets.compare_digest(self.config.clients[client_id], secret or ""):
            raise OAuthError("invalid_client", "Client authentication failed: wrong client secret.")
        return client_id

    # ------------------------------------------------------------------------------------- token

    def issue(
        self, *, client_id: str, user_id: str, user: str, scope: str, family: str, now: float
    ) -> dict[str, Any]:
        """The 7-field token response of §2.2."""
        ttl = self.config.access_token_ttl
        iat = int(now)
        scopes = (
            "accounts:rw accounting:rw core:rw"
            if scope == "full_access"
            else "accounts:r accounting:r core:r"
        )
        claims = {
            "jti": str(uuid.uuid4()),
            "iat": iat,
            "exp": iat + ttl,
            "iss": "oauth.aws.sbc-accounting.sage.com",
            "sub": user_id,
            "aud": "api.sbc-accounting.sage.com",
            "azp": client_id,
            "country": "gb",
            "scopes": scopes,
        }
        access = _jwt_like(claims)
        refresh = _jwt_like({**claims, "jti": str(uuid.uuid4()), "exp": iat + self.config.refresh_token_ttl})
        self.access[access] = AccessToken(client_id, user, scope, now + ttl, family)
        self.refresh[refresh] = RefreshToken(
            client_id, user, scope, now + self.config.refresh_token_ttl, family
        )
        self.families.setdefault(family, []).append(refresh)
        return {
            "access_token": access,
            "scope": scope,
            "token_type": "bearer",
            "expires_in": ttl,
            "refresh_token": refresh,
            "refresh_token_expires_in": self.config.refresh_token_ttl,
            "requested_by_id": str(uuid.UUID(hex=user_id)),
        }

    def exchange_code(self, form: dict[str, str], client_id: str, now: float) -> AuthCode:
        code = form.get("code")
        if not code:
            raise OAuthError("invalid_request", "Missing parameter: code.")
        grant = self.codes.get(code)
        # §2.2: "single-use only and expires after 60 seconds"; §2.4: all of these are invalid_grant.
        if grant is None or grant.used or now >= grant.expires or grant.client_id != client_id:
            raise OAuthError("invalid_grant", "The authorization code is invalid, expired or already used.")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "The redirect_uri does not match the authorization request.")
        if grant.challenge is not None:
            verifier = form.get("code_verifier") or ""
            if grant.method == "S256":
                computed = _b64url(hashlib.sha256(verifier.encode()).digest())
            else:
                computed = verifier
            if not verifier or not secrets.compare_digest(computed, grant.challenge):
                raise OAuthError("invalid_grant", "The code_verifier does not match the code_challenge.")
        grant.used = True
        return grant

    def rotate(self, form: dict[str, str], client_id: str, now: float) -> RefreshToken:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "Missing parameter: refresh_token.")
        found = self.refresh.get(token)
        # §2.3 [G-oauthts]: invalid when expired, revoked, used before, or not the most recent one.
        if found is None or found.state != "active" or now >= found.expires or found.client_id != client_id:
            raise OAuthError(
                "invalid_grant", "The refresh token is invalid, expired, revoked or already used."
            )
        found.state = "used"
        return found

    def revoke(self, token: str) -> Literal["ok", "access_token"]:
        """§2.5: only refresh tokens can be revoked; revoking one ends its whole family."""
        if token in self.access:
            return "access_token"
        found = self.refresh.get(token)
        if found is not None:
            for member in self.families.get(found.family, []):
                self.refresh[member].state = "revoked"
        return "ok"

    def expire_access_tokens(self, now: float) -> int:
        count = 0
        for token in self.access.values():
            if token.expires > now:
                token.expires = now
                count += 1
        return count

    def access_token(self, raw: str, now: float) -> AccessToken | None:
        found = self.access.get(raw)
        return found if found is not None and now < found.expires else None
