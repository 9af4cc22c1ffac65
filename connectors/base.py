"""The connector contract.

A connector is the provider-specific half of LedgerBridge. It is built **per request** from a
:class:`ConnectorContext` (the connection's settings, a :class:`CredentialStore`, the shared
``httpx.AsyncClient`` and the gateway's :class:`UpstreamGate`) and never touches the database: refreshed
credentials go back through the store, and every upstream HTTP call goes through
:func:`connectors.http.send`, which applies the gate (rate budgets, request log) and the one retry policy.

Declaring a provider (after Nango's providers.yaml, kept apart in types):

* ``info`` — name, display name, auth mode;
* ``App`` — app-level configuration from the gateway's settings (client id/secret, URLs, sender id);
* ``Settings`` — per-connection, non-secret settings (business id, entity id);
* ``Credentials`` — what a caller gives at connection time (validated by the connector's own type);
* ``capabilities`` — resources × operations × filters, served at ``GET /v1/providers``.

Writes are *ensures*: a write method called again with the same :class:`WriteRequest` ``guard`` must never
create a second record upstream. Connectors put the guard into the upstream's own duplicate protection
(Sage ``idempotency_id``, Intacct ``controlid`` with ``uniqueid=true``) and, when the upstream reports the
guard as already used, look the record up and return it. An outcome they cannot establish is raised as
:class:`~connectors.errors.OutcomeUnknown`, never as a failure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from abc import ABC
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from connectors.errors import Problem, UnsupportedOperation
from connectors.models import (
    Account,
    Contact,
    ContactCreate,
    ContactUpdate,
    Invoice,
    InvoiceCreate,
    InvoiceVoid,
    Journal,
    JournalCreate,
    Page,
    TaxRate,
)


class Resource(StrEnum):
    contacts = "contacts"
    invoices = "invoices"
    journals = "journals"
    accounts = "accounts"
    tax_rates = "tax_rates"


class Operation(StrEnum):
    list = "list"
    get = "get"
    create = "create"
    update = "update"
    void = "void"
    validate = "validate"


@dataclass(frozen=True)
class Capability:
    """One resource a connector serves: which operations, and which list filters it honours."""

    resource: Resource
    operations: frozenset[Operation]
    filters: frozenset[str] = frozenset()


AuthMode = Literal["oauth2", "credentials"]


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    display_name: str
    auth_mode: AuthMode
    docs_url: str = ""


class ListQuery(BaseModel):
    """A unified list request (CONTRACT §3). ``cursor`` is opaque to callers and owned by the connector."""

    model_config = ConfigDict(frozen=True)

    page_size: int = 50
    cursor: str | None = None
    updated_since: dt.datetime | None = None
    filters: dict[str, str] = {}
    include_raw: bool = False


@dataclass(frozen=True)
class WriteRequest:
    """Identity of one intended upstream write.

    ``guard`` is stable across retries of the same intent (derived from the caller's ``Idempotency-Key``
    or generated once and recorded by the gateway before the first send). Connectors derive the upstream
    duplicate guard from it with :func:`derive_guard`.
    """

    guard: str


def derive_guard(guard: str, *, length: int = 32) -> str:
    """A hex duplicate guard for the upstream (Sage wants 32 hex chars without hyphens)."""
    return hashlib.sha256(guard.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class StoredSecrets:
    """A connection's decrypted secrets as last stored, with their expiry and a fencing ``version``."""

    values: Mapping[str, str]
    expires_at: dt.datetime | None = None
    version: int = 0

    def __repr__(self) -> str:
        return (
            f"StoredSecrets(keys={sorted(self.values)}, expires_at={self.expires_at}, version={self.version})"
        )


class CredentialStore(Protocol):
    """Where a connector reads and writes its connection's secrets (implemented by the gateway).

    ``exclusive()`` is the single-flight refresh lock: it is held by at most one coroutine, process or
    replica per connection, and yields the secrets re-read *inside* the lock, so a refresh that another
    holder already did is seen. ``save()`` is only called inside ``exclusive()`` and returns once the new
    secrets are durable — before the connector uses them (a rotated refresh token must never be lost).
    """

    async def load(self) -> StoredSecrets: ...

    def exclusive(self) -> AbstractAsyncContextManager[StoredSecrets]: ...

    async def save(self, values: Mapping[str, str], expires_at: dt.datetime | None) -> StoredSecrets: ...

    async def require_reauthorization(self, reason: str) -> None: ...


class MemoryCredentialStore:
    """An in-process :class:`CredentialStore` for library use and tests (single process only)."""

    def __init__(
        self, values: Mapping[str, str] | None = None, expires_at: dt.datetime | None = None
    ) -> None:
        self.current = StoredSecrets(dict(values or {}), expires_at, 0)
        self.lock = asyncio.Lock()
        self.reauthorization_reason: str | None = None
        self.saves = 0

    async def load(self) -> StoredSecrets:
        return self.current

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[StoredSecrets]:
        async with self.lock:
            yield self.current

    def exclusive(self) -> AbstractAsyncContextManager[StoredSecrets]:
        return self._exclusive()

    async def save(self, values: Mapping[str, str], expires_at: dt.datetime | None) -> StoredSecrets:
        self.current = StoredSecrets(dict(values), expires_at, self.current.version + 1)
        self.saves += 1
        return self.current

    async def require_reauthorization(self, reason: str) -> None:
        self.reauthorization_reason = reason


CallKind = Literal["read", "write", "auth"]


@dataclass
class UpstreamCall:
    """One logical upstream call, as the gate sees it (one per attempt is recorded)."""

    provider: str
    method: str
    url: str
    kind: CallKind
    scope: str | None = None
    """The upstream account the call is billed to (Sage business id, Intacct company id)."""
    label: str = ""
    """A short name for logs and counters, e.g. ``POST /sales_invoices`` or ``XML create:GLBATCH``."""
    request_body: bytes | None = None


@dataclass
class CallOutcome:
    """What happened on one attempt of an :class:`UpstreamCall`."""

    attempt: int
    duration_ms: float
    status: int | None = None
    upstream_request_id: str | None = None
    error: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    response_body: bytes | None = None


class UpstreamGate(Protocol):
    """The gateway's hook around every upstream attempt: rate budgets, concurrency caps, request log.

    ``admit()`` raises :class:`~connectors.errors.RateLimited` to refuse a call early (no upstream call is
    made); ``record()`` sees every attempt's outcome, including upstream 429s and ``Retry-After``.
    """

    def admit(self, call: UpstreamCall) -> AbstractAsyncContextManager[None]: ...

    async def record(self, call: UpstreamCall, outcome: CallOutcome) -> None: ...


class OpenGate:
    """A gate that admits everything and records nothing (library use without the gateway)."""

    @asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        yield

    def admit(self, call: UpstreamCall) -> AbstractAsyncContextManager[None]:
        return self._admit()

    async def record(self, call: UpstreamCall, outcome: CallOutcome) -> None:
        return None


@dataclass
class ConnectorContext:
    """Everything a connector instance may use. Built per request by the gateway."""

    http: httpx.AsyncClient
    app: BaseModel
    settings: BaseModel
    store: CredentialStore
    gate: UpstreamGate = field(default_factory=OpenGate)
    connection_id: str = ""


@dataclass(frozen=True)
class TokenSet:
    """Secrets and settings produced by a connect flow, to be stored by the gateway."""

    secrets: dict[str, str]
    expires_at: dt.datetime | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TokenSet(keys={sorted(self.secrets)}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """Settings learnt during the check (e.g. the list of Sage businesses)."""


PROXY_REQUEST_HEADERS = (
    "accept",
    "accept-language",
    "content-type",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
)
"""Request headers a proxy caller may pass to an upstream (lower case). Authorization, cookies, hop-by-hop
headers, Host, X-Forwarded-*, X-Business and everything else are dropped: the connector sends its own."""


@dataclass(frozen=True)
class ProxyResponse:
    status: int
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    upstream_request_id: str | None = None


class Connector(ABC):
    """Base class of every provider. Subclasses declare the class attributes and implement handlers.

    A handler a connector does not implement raises :class:`UnsupportedOperation` (501); ``capabilities``
    must list exactly what is implemented (the contract test suite checks this).
    """

    info: ClassVar[ProviderInfo]
    App: ClassVar[type[BaseModel]]
    Settings: ClassVar[type[BaseModel]]
    Credentials: ClassVar[type[BaseModel] | None] = None
    capabilities: ClassVar[tuple[Capability, ...]] = ()

    def __init__(self, ctx: ConnectorContext) -> None:
        self.ctx = ctx

    @classmethod
    def capability(cls, resource: Resource) -> Capability | None:
        return next((c for c in cls.capabilities if c.resource == resource), None)

    @classmethod
    def supports(cls, resource: Resource, operation: Operation) -> bool:
        cap = cls.capability(resource)
        return cap is not None and operation in cap.operations

    def _unsupported(self, what: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"{self.info.display_name} does not support {what}")

    # --- connection lifecycle -------------------------------------------------------------------------

    @classmethod
    def authorization_url(cls, app: BaseModel, *, redirect_uri: str, state: str, code_challenge: str) -> str:
        """OAuth2 providers: where to send the end customer to authorize (PKCE S256)."""
        raise UnsupportedOperation(f"{cls.info.display_name} does not use OAuth authorization")

    @classmethod
    async def exchange_code(
        cls, http: httpx.AsyncClient, app: BaseModel, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenSet:
        """OAuth2 providers: trade an authorization code for tokens."""
        raise UnsupportedOperation(f"{cls.info.display_name} does not use OAuth authorization")

    @classmethod
    async def establish(cls, http: httpx.AsyncClient, app: BaseModel, credentials: BaseModel) -> TokenSet:
        """Credential providers: verify the given credentials upstream; raise ``InvalidCredentials``."""
        raise UnsupportedOperation(f"{cls.info.display_name} does not take credentials directly")

    async def check(self) -> CheckResult:
        """A live call proving the stored credentials work; may refresh them."""
        raise self._unsupported("checks")

    async def revoke(self) -> None:
        """Revoke the upstream grant where the provider supports it (best effort)."""
        return None

    # --- contacts -----------------------------------------------------------------------------------

    async def list_contacts(self, query: ListQuery) -> Page[Contact]:
        raise self._unsupported("listing contacts")

    async def get_contact(self, record_id: str, *, include_raw: bool = False) -> Contact:
        raise self._unsupported("reading contacts")

    async def create_contact(self, data: ContactCreate, write: WriteRequest) -> Contact:
        raise self._unsupported("creating contacts")

    async def update_contact(self, record_id: str, data: ContactUpdate, write: WriteRequest) -> Contact:
        raise self._unsupported("updating contacts")

    # --- invoices -----------------------------------------------------------------------------------

    async def list_invoices(self, query: ListQuery) -> Page[Invoice]:
        raise self._unsupported("listing invoices")

    async def get_invoice(self, record_id: str, *, include_raw: bool = False) -> Invoice:
        raise self._unsupported("reading invoices")

    async def create_invoice(self, data: InvoiceCreate, write: WriteRequest) -> Invoice:
        raise self._unsupported("creating invoices")

    async def void_invoice(self, record_id: str, data: InvoiceVoid, write: WriteRequest) -> Invoice:
        raise self._unsupported("voiding invoices")

    async def validate_invoice(self, data: InvoiceCreate) -> list[Problem]:
        """Every check ``create_invoice`` would make (upstream lookups included), writing nothing."""
        raise self._unsupported("validating invoices")

    # --- journals -----------------------------------------------------------------------------------

    async def list_journals(self, query: ListQuery) -> Page[Journal]:
        raise self._unsupported("listing journals")

    async def get_journal(self, record_id: str, *, include_raw: bool = False) -> Journal:
        raise self._unsupported("reading journals")

    async def create_journal(self, data: JournalCreate, write: WriteRequest) -> Journal:
        raise self._unsupported("creating journals")

    async def validate_journal(self, data: JournalCreate) -> list[Problem]:
        raise self._unsupported("validating journals")

    # --- reference data -----------------------------------------------------------------------------

    async def list_accounts(self, query: ListQuery) -> Page[Account]:
        raise self._unsupported("listing accounts")

    async def list_tax_rates(self, query: ListQuery) -> Page[TaxRate]:
        raise self._unsupported("listing tax rates")

    # --- raw proxy (CONTRACT §8) --------------------------------------------------------------------

    async def proxy(
        self, method: str, path: str, *, query: str, headers: Mapping[str, str], body: bytes
    ) -> ProxyResponse:
        """Forward a relative path to the upstream API with auth injected (path already vetted)."""
        raise self._unsupported("the HTTP proxy")

    async def proxy_xml(self, functions: bytes) -> ProxyResponse:
        """Wrap ``<function>`` elements in the provider's envelope and return the raw XML response."""
        raise self._unsupported("the XML proxy")
