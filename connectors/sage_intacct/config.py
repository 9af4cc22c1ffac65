"""Declared types of the Sage Intacct provider (app config, connection settings, credentials)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class SageIntacctApp(BaseModel):
    """App-level configuration (``LEDGERBRIDGE_SAGE_INTACCT_*``, CONTRACT §10): the gateway's sender."""

    model_config = ConfigDict(frozen=True)

    sender_id: str = ""
    sender_password: SecretStr = SecretStr("")
    xml_url: str = "https://api.intacct.com/ia/xml/xmlgw.phtml"
    rest_url: str = "https://api.intacct.com/ia/api/v1"


class SageIntacctRestCredentials(BaseModel):
    """Optional REST API client (sage-intacct-wire.md §3.1): enables the REST path for customers."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(min_length=1, max_length=200)
    client_secret: SecretStr = Field(min_length=1)


class SageIntacctCredentials(BaseModel):
    """What a caller gives in ``POST /v1/connections`` (``credentials`` plus the optional ``rest``)."""

    model_config = ConfigDict(extra="forbid")

    company_id: str = Field(min_length=1, max_length=100)
    user_id: str = Field(min_length=1, max_length=100)
    user_password: SecretStr = Field(min_length=1)
    entity_id: str | None = Field(default=None, min_length=1, max_length=100)
    rest: SageIntacctRestCredentials | None = None


class SageIntacctSettings(BaseModel):
    """Per-connection, non-secret settings."""

    model_config = ConfigDict(extra="forbid")

    company_id: str
    user_id: str
    entity_id: str | None = None
    location_id: str | None = None
    rest_enabled: bool = False
    journal_symbol: str = Field(default="GJ", min_length=1, max_length=20)
    """The GLBATCH ``JOURNAL`` new journals are posted to (sage-intacct-wire.md §2.6)."""
