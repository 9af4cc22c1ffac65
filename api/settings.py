"""Typed settings from ``LEDGERBRIDGE_*`` environment variables (CONTRACT §10)."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.sage_accounting.config import SageAccountingApp
from connectors.sage_intacct.config import SageIntacctApp


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGERBRIDGE_", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite:///./ledgerbridge.db"
    keyring: SecretStr | None = None
    active_key_id: str | None = None
    dev_key_file: str = ".ledgerbridge/dev-keyring.json"
    admin_token: SecretStr | None = None
    public_url: str = "http://127.0.0.1:8000"
    redis_url: str | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 10
    log_level: str = "INFO"
    max_body_bytes: int = 1_048_576
    request_log_retention_days: int = 30
    idempotency_retention_days: int = Field(7, ge=7)
    """``Idempotency-Key`` records are kept at least this long (CONTRACT §7: at least 7 days), then reaped."""
    oauth_state_ttl_seconds: int = 600
    upstream_timeout_seconds: float = 30.0
    http_transport: Literal["httpx", "aiohttp"] = "aiohttp"
    cache_seconds: float = Field(5.0, ge=0)
    """How long a process trusts an API key or connection row it read (``api/cache.py``; 0: never). Changes
    made through this process apply at once; other processes see them within this time."""
    reconciler_interval_seconds: float = 30.0
    """How often the background reconciler finishes stale writes (0 turns it off)."""
    write_lease_seconds: float = Field(30.0, gt=0)
    """How long an in-flight write holds its ``Idempotency-Key`` without a heartbeat (renewed every third)."""
    inline_reconcile_attempts: int = Field(1, ge=0)
    """Extra calls with the same duplicate guard before a write answers 504 ``outcome_unknown``."""
    reconciler_max_attempts: int = Field(50, ge=1)
    """Attempts after which the reconciler stops retrying an intent (it stays ``unknown``, logged)."""
    reaper_interval_seconds: float = 3600.0
    """How often expired idempotency records and request-log rows are deleted (0 turns it off)."""

    rate_limit_enabled: bool = True
    rate_limit_policies: dict[str, dict[str, Any] | None] | None = None
    """JSON ``{policy name: fields | null}`` over the defaults (see ``api/ratelimit/policies.py``)."""
    rate_limit_concurrency_wait_seconds: float = 2.0
    """How long a call waits for a concurrency slot before 429 (bounded: no unbounded queue)."""
    rate_limit_default_retry_after_seconds: float = 30.0
    """The wait assumed after an upstream 429 that carries no ``Retry-After`` (Sage documents none)."""
    rate_limit_lease_seconds: float | None = None
    """Lease of a concurrency slot (a crashed holder's slot frees after it); default 2× upstream timeout + 30 s."""

    sage_accounting_client_id: str = ""
    sage_accounting_client_secret: SecretStr = SecretStr("")
    sage_accounting_authorize_url: str = "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1"
    sage_accounting_token_url: str = "https://oauth.accounting.sage.com/token"
    sage_accounting_revoke_url: str = "https://oauth.accounting.sage.com/revoke"
    sage_accounting_api_url: str = "https://api.accounting.sage.com/v3.1"

    sage_intacct_sender_id: str = ""
    sage_intacct_sender_password: SecretStr = SecretStr("")
    sage_intacct_xml_url: str = "https://api.intacct.com/ia/xml/xmlgw.phtml"
    sage_intacct_rest_url: str = "https://api.intacct.com/ia/api/v1"

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/v1/oauth/callback"

    @cached_property
    def provider_apps(self) -> dict[str, SageAccountingApp | SageIntacctApp]:
        return {
            "sage_accounting": SageAccountingApp(
                client_id=self.sage_accounting_client_id,
                client_secret=self.sage_accounting_client_secret,
                authorize_url=self.sage_accounting_authorize_url,
                token_url=self.sage_accounting_token_url,
                revoke_url=self.sage_accounting_revoke_url,
                api_url=self.sage_accounting_api_url,
            ),
            "sage_intacct": SageIntacctApp(
                sender_id=self.sage_intacct_sender_id,
                sender_password=self.sage_intacct_sender_password,
                xml_url=self.sage_intacct_xml_url,
                rest_url=self.sage_intacct_rest_url,
            ),
        }
