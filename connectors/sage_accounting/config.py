"""Declared types of the Sage Business Cloud Accounting provider (app config, connection settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class SageAccountingApp(BaseModel):
    """App-level configuration (``LEDGERBRIDGE_SAGE_ACCOUNTING_*``, CONTRACT §10)."""

    model_config = ConfigDict(frozen=True)

    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    authorize_url: str = "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1"
    token_url: str = "https://oauth.accounting.sage.com/token"
    revoke_url: str = "https://oauth.accounting.sage.com/revoke"
    api_url: str = "https://api.accounting.sage.com/v3.1"
    scope: str = "full_access"


class SageBusiness(BaseModel):
    """One business (company file) the authorizing Sage user can reach (``GET /businesses``)."""

    id: str
    name: str | None = None


class SageAccountingSettings(BaseModel):
    """Per-connection, non-secret settings. ``business_id`` is sent as ``X-Business`` on every call."""

    model_config = ConfigDict(extra="forbid")

    business_id: str | None = None
    businesses: list[SageBusiness] = Field(default_factory=list)
    country: str | None = None


class SageAccountingPatch(BaseModel):
    """What a caller may change with ``PATCH /v1/connections/{id}``."""

    model_config = ConfigDict(extra="forbid")

    business_id: str = Field(min_length=1, max_length=64)
