"""Typed settings from ``LEDGERBRIDGE_*`` environment variables (CONTRACT §10)."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import SecretStr
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
    log_level: str = "INFO"
    max_body_bytes: int = 1_048_576
    request_log_retention_days: int = 30
    idempotency_retention_days: int = 7
    oauth_state_ttl_seconds: int = 600
    upstream_timeout_seconds: float = 30.0
    reconciler_interval_seconds: float = 30.0

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
