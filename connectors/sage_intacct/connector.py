"""Sage Intacct (sage-intacct-wire.md): the XML gateway for everything, REST for customers when enabled.

Reads use the ``query`` function with ``offset`` paging rather than ``readByQuery``/``readMore``: a
``resultId`` lives in one API session (§2.1) while a LedgerBridge cursor must survive across requests,
processes and session renewals, and ``query`` with an explicit order and an offset is a plain, repeatable
question (§2.2). Writes run with ``uniqueid=true`` and the function ``controlid`` derived from the write
guard, so a re-sent write is refused by Intacct instead of applied twice (factcheck #15); that refusal
means the first attempt committed, and the record is looked up and returned.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import httpx
from lxml import etree
from pydantic import BaseModel

from connectors.base import (
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
    TokenSet,
    WriteRequest,
    derive_guard,
)
from connectors.errors import (
    ErrorCollector,
    InvalidCredentials,
    NotFound,
    OutcomeUnknown,
    Problem,
    ReauthorizationRequired,
    UnsupportedField,
    UnsupportedOperation,
    ValidationFailed,
)
from connectors.models import (
    Account,
    Contact,
    ContactCreate,
    ContactRole,
    ContactUpdate,
    Invoice,
    InvoiceCreate,
    InvoiceStatus,
    Journal,
    JournalCreate,
    Page,
    TaxRate,
)
from connectors.sage_intacct import mapping as m
from connectors.sage_intacct.config import (
    SageIntacctApp,
    SageIntacctCredentials,
    SageIntacctSettings,
)
from connectors.sage_intacct.rest import load_json, parse_rest_collection, parse_rest_object
from connectors.sage_intacct.session import (
    REST_CLIENT_ID,
    REST_CLIENT_SECRET,
    SESSION_ENDPOINT,
    SESSION_ID,
    SESSION_LIFETIME,
    USER_PASSWORD,
    IntacctClient,
    LoginRejected,
    client_credentials_form,
    function_error,
    is_duplicate_controlid,
    now,
    open_session,
    request_token,
    rest_error,
    token_values,
    upstream_info,
)
from connectors.sage_intacct.xml import (
    FunctionResult,
    Login,
    Record,
    XmlResponse,
    element,
    function,
    parse_functions,
)

_O = Operation
QUERY_MAX_PAGE = 2000  # §2.2: query pagesize 1..2000
READ_BY_QUERY_MAX_PAGE = 1000  # §2.1: readByQuery pagesize 1..1000
IN_MAX_VALUES = 1000  # §2.2 / §4: in/notin take at most 1000 values
REST_CUSTOMER = "objects/accounts-receivable/customer"
REST_QUERY = "services/core/query"

# Functions that only read (§2, XSD function choice): proxied with uniqueid=false and read retries.
READ_FUNCTIONS = frozenset(
    {
        "read",
        "readByName",
        "readByQuery",
        "readMore",
        "readRelated",
        "readView",
        "readReport",
        "query",
        "lookup",
        "inspect",
        "getUserPermissions",
        "getDimensionRestrictions",
        "getDimensionRelationships",
        "getDimensionAutofillDetails",
        "getDimensionRestrictedData",
        "getDimensionAutofillData",
        "getAuditTrail",
        "getTransactionsToApprove",
        "getApprovalHistory",
    }
)
PROXY_RESPONSE_HEADERS = ("content-type", "retry-after")

Model = TypeVar("Model", bound=BaseModel)


def _as(model: type[Model], value: BaseModel) -> Model:
    if isinstance(value, model):
        return value
    return model.model_validate(value.model_dump())


def _page_size(query: ListQuery, maximum: int = QUERY_MAX_PAGE) -> int:
    return max(1, min(query.page_size, maximum))


def _invalid(field: str, message: str, code: str = "invalid") -> ValidationFailed:
    return ValidationFailed(message, problems=[Problem(field, code, message)])


def _encode_cursor(kind: str, position: Mapping[str, int]) -> str:
    payload = json.dumps({"v": 1, "k": kind, **position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


def _decode_cursor(cursor: str | None, kind: str, keys: Sequence[str]) -> dict[str, int]:
    """An opaque cursor: the object index and offset to continue from (never a resultId, see above)."""
    if not cursor:
        return {key: 0 for key in keys}
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        raise _invalid("cursor", "The cursor is not valid for this list") from None
    if not isinstance(payload, dict) or payload.get("v") != 1 or payload.get("k") != kind:
        raise _invalid("cursor", "The cursor is not valid for this list")
    position: dict[str, int] = {}
    for key in keys:
        value = payload.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _invalid("cursor", "The cursor is not valid for this list")
        position[key] = value
    return position


def _check_filters(query: ListQuery, allowed: frozenset[str]) -> dict[str, str]:
    unknown = sorted(set(query.filters) - allowed)
    if unknown:
        raise ValidationFailed(
            "Unsupported list filter",
            problems=[
                Problem(f"filters.{name}", "unsupported_filter", "Sage Intacct cannot filter on this")
                for name in unknown
            ],
        )
    return dict(query.filters)


class SageIntacctConnector(Connector):
    """Sage Intacct: XML Web Services (session auth through the gateway's sender) and REST for customers.

    Secrets: ``user_password`` (to renew sessions), ``session_id``, ``session_endpoint``,
    ``session_lifetime``; with REST also ``rest_client_id``, ``rest_client_secret``,
    ``rest_access_token``, ``rest_access_token_expires_at`` and ``rest_refresh_token``.
    """

    info = ProviderInfo(
        "sage_intacct", "Sage Intacct", "credentials", "https://developer.intacct.com/web-services/"
    )
    App = SageIntacctApp
    Settings = SageIntacctSettings
    Credentials = SageIntacctCredentials
    capabilities: ClassVar[tuple[Capability, ...]] = (
        Capability(
            Resource.contacts,
            frozenset({_O.list, _O.get, _O.create, _O.update}),
            frozenset({"role", "email", "name", "updated_since"}),
        ),
        Capability(
            Resource.invoices,
            frozenset({_O.list, _O.get, _O.create, _O.validate}),
            frozenset({"contact_id", "status", "updated_since"}),
        ),
        Capability(
            Resource.journals,
            frozenset({_O.list, _O.get, _O.create, _O.validate}),
            frozenset({"updated_since"}),
        ),
        Capability(Resource.accounts, frozenset({_O.list}), frozenset({"updated_since"})),
        Capability(Resource.tax_rates, frozenset({_O.list}), frozenset()),
    )

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.app = _as(SageIntacctApp, ctx.app)
        self.settings = _as(SageIntacctSettings, ctx.settings)
        self.client = IntacctClient(ctx, self.app, self.settings)

    # --- connection lifecycle -----------------------------------------------------------------------

    @classmethod
    async def establish(cls, http: httpx.AsyncClient, app: BaseModel, credentials: BaseModel) -> TokenSet:
        """Log in with ``getAPISession`` (entity sessions via ``<locationid>``, §1.2) and, when REST
        credentials are given, verify them with the client-credentials grant (§3.1)."""
        config = _as(SageIntacctApp, app)
        creds = _as(SageIntacctCredentials, credentials)
        settings = SageIntacctSettings(
            company_id=creds.company_id,
            user_id=creds.user_id,
            entity_id=creds.entity_id,
            rest_enabled=creds.rest is not None,
        )
        ctx = ConnectorContext(http=http, app=config, settings=settings, store=MemoryCredentialStore())
        password = creds.user_password.get_secret_value()
        login = Login(creds.user_id, creds.company_id, password, creds.entity_id)
        try:
            session = await open_session(ctx, config, login)
        except LoginRejected as exc:
            raise InvalidCredentials(
                "Sage Intacct rejected the user id, company id, password or entity", upstream=exc.info
            ) from None
        secrets = {
            USER_PASSWORD: password,
            SESSION_ID: session.session_id,
            SESSION_ENDPOINT: session.endpoint,
        }
        if session.lifetime:
            secrets[SESSION_LIFETIME] = str(int(session.lifetime))
        if creds.rest is not None:
            client_secret = creds.rest.client_secret.get_secret_value()
            form = client_credentials_form(settings, creds.rest.client_id, client_secret)
            issued = now()
            try:
                token = await request_token(ctx, config, settings, form, retry="read")
            except LoginRejected as exc:
                raise InvalidCredentials(
                    "Sage Intacct rejected the REST client id or secret", upstream=exc.info
                ) from None
            secrets[REST_CLIENT_ID] = creds.rest.client_id
            secrets[REST_CLIENT_SECRET] = client_secret
            secrets.update(token_values(token, issued=issued))
        settings = settings.model_copy(update={"location_id": session.locationid or creds.entity_id})
        return TokenSet(secrets=secrets, expires_at=session.expires_at, settings=settings.model_dump())

    async def check(self) -> CheckResult:
        """One GLACCOUNT row on the shared session (renewing it if needed), plus the REST token."""
        try:
            await self._query("GLACCOUNT", ("ACCOUNTNO",), pagesize=1)
            if self.settings.rest_enabled:
                await self.client.token()
        except (ReauthorizationRequired, InvalidCredentials) as exc:
            return CheckResult(ok=False, detail=exc.detail)
        scope = f"entity {self.settings.entity_id}" if self.settings.entity_id else "top level"
        api = "XML and REST" if self.settings.rest_enabled else "XML"
        return CheckResult(ok=True, detail=f"Company {self.settings.company_id} ({scope}) over {api}")

    # --- XML plumbing -------------------------------------------------------------------------------

    async def _read(self, bodies: Sequence[etree._Element], label: str) -> XmlResponse:
        functions = [function(str(uuid.uuid4()), body) for body in bodies]
        return await self.client.call(functions, kind="read", label=label, retry="read")

    def _result(self, parsed: XmlResponse, index: int, what: str) -> FunctionResult:
        result = parsed.results[index]
        if not result.ok:
            raise function_error(result, status=200, request_id=parsed.control_id, what=what)
        return result

    async def _query(
        self,
        object_name: str,
        fields: Sequence[str],
        *,
        condition: etree._Element | None = None,
        pagesize: int = 100,
        offset: int = 0,
        case_insensitive: bool = False,
        descending: bool = False,
    ) -> FunctionResult:
        body = m.query(
            object_name,
            fields,
            condition=condition,
            pagesize=pagesize,
            offset=offset,
            case_insensitive=case_insensitive,
            descending=descending,
        )
        parsed = await self._read([body], f"XML query:{object_name}")
        return self._result(parsed, 0, f"the {object_name} query")

    async def _offset_page(
        self,
        kind: str,
        object_name: str,
        fields: Sequence[str],
        query: ListQuery,
        conditions: list[etree._Element],
        build: Callable[[Sequence[Record]], Awaitable[list[Model]]],
        *,
        pagesize: int,
    ) -> tuple[list[Model], str | None]:
        """One page of a ``query`` paged by offset, and the cursor of the next page (None at the end)."""
        position = _decode_cursor(query.cursor, kind, ("o",))
        result = await self._query(
            object_name, fields, condition=m.all_of(conditions), pagesize=pagesize, offset=position["o"]
        )
        records = await build(result.records)
        remaining = result.data.numremaining if result.data else 0
        return records, _encode_cursor(kind, {"o": position["o"] + len(records)}) if remaining else None

    async def _children(
        self, object_name: str, fields: Sequence[str], parent_field: str, keys: Sequence[str]
    ) -> dict[str, list[Record]]:
        """All child rows of ``keys`` in one batched ``readByQuery … IN (…)`` (never a query per
        parent); ``readMore`` continues within the same session only if a page holds >1000 rows."""
        grouped: dict[str, list[Record]] = {key: [] for key in keys}
        for start in range(0, len(keys), IN_MAX_VALUES):
            chunk = keys[start : start + IN_MAX_VALUES]
            text = f"{parent_field} IN ({','.join(m.quote(key) for key in chunk)})"
            body = m.read_by_query(object_name, fields, text, READ_BY_QUERY_MAX_PAGE)
            parsed = await self._read([body], f"XML readByQuery:{object_name}")
            result = self._result(parsed, 0, f"the {object_name} query")
            while True:
                for record in result.records:
                    parent = m.text(record, parent_field)
                    if parent in grouped:
                        grouped[parent].append(record)
                data = result.data
                if data is None or not data.numremaining or not data.result_id:
                    break
                parsed = await self._read([m.read_more(data.result_id)], f"XML readMore:{object_name}")
                result = self._result(parsed, 0, f"the {object_name} query")
        return grouped

    async def _write(
        self, body: etree._Element, write: WriteRequest, label: str
    ) -> tuple[FunctionResult, XmlResponse]:
        """One write function, ``controlid`` = the derived guard, ``uniqueid=true`` (factcheck #15):
        a retry (ours on 5xx, or the caller's after OutcomeUnknown) can never apply twice."""
        fn = function(derive_guard(write.guard), body)
        parsed = await self.client.call([fn], kind="write", label=label, uniqueid=True, retry="guarded")
        return parsed.results[0], parsed

    @staticmethod
    def _updated_since(query: ListQuery, field: str = "WHENMODIFIED") -> list[etree._Element]:
        if query.updated_since is None:
            return []
        # §2.1/§2.8: timestamps in filters are MM/DD/YYYY HH:MM:SS.
        return [m.cmp("greaterthanorequalto", field, m.fmt_timestamp(query.updated_since))]

    # --- contacts -----------------------------------------------------------------------------------

    def _rest_customers(self) -> bool:
        return self.settings.rest_enabled

    async def list_contacts(self, query: ListQuery) -> Page[Contact]:
        filters = _check_filters(query, frozenset({"role", "email", "name"}))
        objects = ["CUSTOMER", "VENDOR"]
        role = filters.get("role")
        if role is not None:
            try:
                objects = [m.PARTY_OBJECTS[ContactRole(role)]]
            except ValueError:
                raise _invalid("filters.role", "role is customer or supplier") from None
        # The cursor says which object the listing is in and the offset within it: customers first,
        # then vendors, each in RECORDNO order, so the merged order is stable.
        position = _decode_cursor(query.cursor, "contacts:" + ",".join(objects), ("i", "o"))
        index, offset = position["i"], position["o"]
        size = _page_size(query, 200)
        data: list[Contact] = []
        while index < len(objects) and len(data) < size:
            want = size - len(data)
            contacts, remaining = await self._party_page(objects[index], filters, query, offset, want)
            data.extend(contacts)
            if remaining > 0:
                offset += len(contacts)
                break
            index, offset = index + 1, 0
        next_cursor = None
        if index < len(objects):
            next_cursor = _encode_cursor("contacts:" + ",".join(objects), {"i": index, "o": offset})
        return Page[Contact](data=data, next_cursor=next_cursor)

    async def _party_page(
        self, object_name: str, filters: Mapping[str, str], query: ListQuery, offset: int, size: int
    ) -> tuple[list[Contact], int]:
        if object_name == "CUSTOMER" and self._rest_customers():
            return await self._rest_customer_page(filters, query, offset, size)
        conditions = self._updated_since(query)
        if "email" in filters:
            conditions.append(m.cmp("equalto", "DISPLAYCONTACT.EMAIL1", filters["email"]))
        if "name" in filters:
            conditions.append(m.cmp("like", "NAME", f"%{filters['name']}%"))
        result = await self._query(
            object_name,
            m.party_fields(object_name),
            condition=m.all_of(conditions),
            pagesize=size,
            offset=offset,
            case_insensitive=bool({"email", "name"} & set(filters)),
        )
        contacts = [m.contact_from_xml(object_name, r, include_raw=query.include_raw) for r in result.records]
        remaining = result.data.numremaining if result.data and result.data.numremaining else 0
        return contacts, remaining

    async def get_contact(self, record_id: str, *, include_raw: bool = False) -> Contact:
        parsed = m.split_contact_id(record_id)
        if parsed is None:
            raise NotFound(f"No Sage Intacct contact {record_id!r}")
        object_name, upstream_id = parsed
        found = await self._find_party(object_name, upstream_id, include_raw=include_raw)
        if found is None:
            raise NotFound(f"No Sage Intacct contact {record_id!r}")
        return found

    async def _find_party(self, object_name: str, upstream_id: str, *, include_raw: bool) -> Contact | None:
        if object_name == "CUSTOMER" and self._rest_customers():
            record = await self._rest_find_customer(upstream_id)
            return None if record is None else m.contact_from_rest(record, include_raw=include_raw)
        condition = m.cmp("equalto", m.PARTY_ID_FIELDS[object_name], upstream_id)
        result = await self._query(object_name, m.party_fields(object_name), condition=condition, pagesize=1)
        if not result.records:
            return None
        return m.contact_from_xml(object_name, result.records[0], include_raw=include_raw)

    @staticmethod
    def _single_role(roles: Sequence[ContactRole], field: str = "roles") -> str:
        if len(set(roles)) != 1:
            raise UnsupportedField(
                "Unsupported field",
                problems=[
                    Problem(
                        field,
                        "unsupported_field",
                        "Sage Intacct keeps customers and vendors apart: one role per contact",
                    )
                ],
            )
        return m.PARTY_OBJECTS[roles[0]]

    async def create_contact(self, data: ContactCreate, write: WriteRequest) -> Contact:
        object_name = self._single_role(data.roles)
        # The caller's reference is the CUSTOMERID/VENDORID; without one it is derived from the guard, so
        # a retried create names the same record and can be looked up (§2.4: the id is the key).
        record_id = data.reference or m.guard_reference(write.guard)
        if object_name == "CUSTOMER" and self._rest_customers():
            return await self._rest_create_customer(record_id, data, derived=data.reference is None)
        body = element("create", children=[m.contact_create_object(object_name, record_id, data)])
        result, parsed = await self._write(body, write, f"XML create:{object_name}")
        if not result.ok and not is_duplicate_controlid(result):
            raise function_error(result, status=200, request_id=parsed.control_id, what="the contact")
        found = await self._find_party(object_name, record_id, include_raw=False)
        if found is None:
            raise OutcomeUnknown(
                "Sage Intacct reported the contact as already created but it cannot be found",
                upstream=upstream_info(200, parsed.control_id, result.errors),
            )
        return found

    async def update_contact(self, record_id: str, data: ContactUpdate, write: WriteRequest) -> Contact:
        parsed_id = m.split_contact_id(record_id)
        if parsed_id is None:
            raise NotFound(f"No Sage Intacct contact {record_id!r}")
        object_name, upstream_id = parsed_id
        if data.roles is not None and self._single_role(data.roles) != object_name:
            raise UnsupportedField(
                "Unsupported field",
                problems=[
                    Problem("roles", "unsupported_field", "A Sage Intacct contact cannot change its role")
                ],
            )
        if data.reference is not None and data.reference != upstream_id:
            raise UnsupportedField(
                "Unsupported field",
                problems=[
                    Problem("reference", "unsupported_field", "The reference is the contact's Intacct id")
                ],
            )
        if object_name == "CUSTOMER" and self._rest_customers():
            return await self._rest_update_customer(upstream_id, data)
        changes = data.model_fields_set - {"roles", "reference"}
        if changes:
            body = element("update", children=[m.contact_update_object(object_name, upstream_id, data)])
            result, parsed = await self._write(body, write, f"XML update:{object_name}")
            # A repeated controlid means this very update already ran: read the record back.
            if not result.ok and not is_duplicate_controlid(result):
                raise function_error(result, status=200, request_id=parsed.control_id, what="the contact")
        found = await self._find_party(object_name, upstream_id, include_raw=False)
        if found is None:
            raise NotFound(f"No Sage Intacct contact {record_id!r}")
        return found

    # --- contacts over REST (§3) -------------------------------------------------------------------

    async def _rest_json(self, response: httpx.Response, what: str) -> Any:
        payload = load_json(response.content) if response.content else None
        if not response.is_success:
            raise rest_error(response, what, payload)
        return payload

    async def _rest_query(
        self,
        filters: list[dict[str, Any]],
        *,
        start: int,
        size: int,
        case_insensitive: bool = False,
    ) -> tuple[list[dict[str, Any]], int | None]:
        spec = m.rest_customer_query(filters, start=start, size=size, case_insensitive=case_insensitive)
        response = await self.client.rest(
            "POST",
            REST_QUERY,
            kind="read",
            retry="read",
            json_body=spec,
            label="REST POST /services/core/query:accounts-receivable/customer",
        )
        page = parse_rest_collection(await self._rest_json(response, "the customer query"))
        return list(page.records), page.next

    async def _rest_customer_page(
        self, filters: Mapping[str, str], query: ListQuery, offset: int, size: int
    ) -> tuple[list[Contact], int]:
        conditions: list[dict[str, Any]] = []
        if query.updated_since is not None:
            since = query.updated_since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            conditions.append({"$gte": {"audit.modifiedDateTime": since}})
        if "email" in filters:
            conditions.append({"$eq": {"contacts.default.email1": filters["email"]}})
        if "name" in filters:
            conditions.append({"$contains": {"name": filters["name"]}})
        records, following = await self._rest_query(
            conditions, start=offset + 1, size=size, case_insensitive=bool({"email", "name"} & set(filters))
        )
        contacts = [m.contact_from_rest(r, include_raw=query.include_raw) for r in records]
        return contacts, 1 if following is not None else 0

    async def _rest_find_customer(self, upstream_id: str) -> dict[str, Any] | None:
        records, _ = await self._rest_query([{"$eq": {"id": upstream_id}}], start=1, size=1)
        return records[0] if records else None

    async def _rest_get_customer(self, key: str) -> Contact:
        response = await self.client.rest(
            "GET",
            f"{REST_CUSTOMER}/{key}",
            kind="read",
            retry="read",
            label=f"REST GET /{REST_CUSTOMER}/{{key}}",
        )
        return m.contact_from_rest(parse_rest_object(await self._rest_json(response, "the customer")))

    async def _rest_create_customer(self, record_id: str, data: ContactCreate, *, derived: bool) -> Contact:
        body = m.customer_rest_create(record_id, data)
        # The REST idempotency header is unconfirmed (reliability-notes.md §2.3), so the customer id is
        # the duplicate guard: a re-sent create is answered "already exists" and reconciled below, which
        # makes re-sending after a 5xx safe ("guarded").
        response = await self.client.rest(
            "POST",
            REST_CUSTOMER,
            kind="write",
            retry="guarded",
            json_body=body,
            label=f"REST POST /{REST_CUSTOMER}",
        )
        payload = load_json(response.content) if response.content else None
        if response.is_success:
            return await self._rest_get_customer(str(parse_rest_object(payload).get("key", "")))
        error = rest_error(response, "the customer", payload)
        text = " ".join(p.message for p in error.problems).lower() + " " + error.detail.lower()
        if response.status_code in (400, 409, 422) and ("already exists" in text or "duplicate" in text):
            record = await self._rest_find_customer(record_id)
            if record is not None:
                existing = m.contact_from_rest(record)
                # An id the guard derived is ours; a caller-chosen one must also look like this request.
                if derived or m.contact_matches(existing, data):
                    return existing
        raise error

    async def _rest_update_customer(self, upstream_id: str, data: ContactUpdate) -> Contact:
        body = m.customer_rest_update(data)
        record = await self._rest_find_customer(upstream_id)
        if record is None:
            raise NotFound(f"No Sage Intacct customer {upstream_id!r}")
        key = str(record.get("key", ""))
        if body:
            # PATCH sets the given fields to the given values: repeating it is harmless.
            response = await self.client.rest(
                "PATCH",
                f"{REST_CUSTOMER}/{key}",
                kind="write",
                retry="guarded",
                json_body=body,
                label=f"REST PATCH /{REST_CUSTOMER}/{{key}}",
            )
            await self._rest_json(response, "the customer update")
        return await self._rest_get_customer(key)

    # --- invoices -----------------------------------------------------------------------------------

    async def list_invoices(self, query: ListQuery) -> Page[Invoice]:
        filters = _check_filters(query, frozenset({"contact_id", "status"}))
        conditions = self._updated_since(query)
        if "contact_id" in filters:
            parsed = m.split_contact_id(filters["contact_id"])
            if parsed is None or parsed[0] != "CUSTOMER":
                return Page[Invoice](data=[], next_cursor=None)  # only customers have AR invoices
            conditions.append(m.cmp("equalto", "CUSTOMERID", parsed[1]))
        if "status" in filters:
            try:
                status = InvoiceStatus(filters["status"])
            except ValueError:
                raise _invalid("filters.status", "Unknown invoice status") from None
            conditions.append(m.in_filter("STATE", m.INVOICE_STATES[status]))
        invoices, next_cursor = await self._offset_page(
            "invoices",
            "ARINVOICE",
            m.INVOICE_FIELDS,
            query,
            conditions,
            lambda records: self._invoices(records, include_raw=query.include_raw),
            pagesize=_page_size(query, 200),
        )
        return Page[Invoice](data=invoices, next_cursor=next_cursor)

    async def _invoices(self, headers: Sequence[Record], *, include_raw: bool) -> list[Invoice]:
        keys = [key for key in (m.text(r, "RECORDNO") for r in headers) if key]
        lines = (
            await self._children("ARINVOICEITEM", m.INVOICE_LINE_FIELDS, "RECORDKEY", keys) if keys else {}
        )
        return [
            m.invoice_from_xml(r, lines.get(m.text(r, "RECORDNO") or "", []), include_raw=include_raw)
            for r in headers
        ]

    async def get_invoice(self, record_id: str, *, include_raw: bool = False) -> Invoice:
        if not record_id.isdigit():
            raise NotFound(f"No Sage Intacct invoice {record_id!r}")
        # Header and lines in one request: two functions, one round trip.
        header = m.query(
            "ARINVOICE", m.INVOICE_FIELDS, condition=m.cmp("equalto", "RECORDNO", record_id), pagesize=1
        )
        items = m.read_by_query(
            "ARINVOICEITEM",
            m.INVOICE_LINE_FIELDS,
            f"RECORDKEY = {m.quote(record_id)}",
            READ_BY_QUERY_MAX_PAGE,
        )
        parsed = await self._read([header, items], "XML query:ARINVOICE+readByQuery:ARINVOICEITEM")
        found = self._result(parsed, 0, "the invoice query")
        if not found.records:
            raise NotFound(f"No Sage Intacct invoice {record_id!r}")
        lines = self._result(parsed, 1, "the invoice line query")
        line_records = list(lines.records)
        if lines.data is not None and lines.data.numremaining and lines.data.result_id:
            grouped = await self._children("ARINVOICEITEM", m.INVOICE_LINE_FIELDS, "RECORDKEY", [record_id])
            line_records = grouped[record_id]
        return m.invoice_from_xml(found.records[0], line_records, include_raw=include_raw)

    async def create_invoice(self, data: InvoiceCreate, write: WriteRequest) -> Invoice:
        errors = ErrorCollector()
        customer = m.invoice_problems(data, errors)
        errors.raise_if_any()
        assert customer is not None
        marker = m.guard_reference(write.guard)
        body = m.create_invoice_body(data, customer, marker)
        result, parsed = await self._write(body, write, "XML create_invoice")
        if result.ok and result.key:
            return await self.get_invoice(result.key)
        if not is_duplicate_controlid(result):
            raise function_error(result, status=200, request_id=parsed.control_id, what="the invoice")
        found = await self._reconcile_invoice(data, customer)
        if found is None:
            raise OutcomeUnknown(
                "Sage Intacct reported the invoice as already created but it cannot be found",
                upstream=upstream_info(200, parsed.control_id, result.errors),
            )
        return found

    async def _reconcile_invoice(self, data: InvoiceCreate, customer: str) -> Invoice | None:
        """The invoice an earlier attempt with the same guard created. ``externalid`` carries the guard's
        reference, but ARINVOICE exposes no documented queryable field for it (§2.5 lists RECORDNO,
        RECORDID, CUSTOMERID, STATE, WHEN*, TOTAL*, DOCNUMBER …), so the candidates with this customer,
        date and reference are compared with the request field by field; the newest match wins."""
        conditions = [
            m.cmp("equalto", "CUSTOMERID", customer),
            m.cmp("equalto", "WHENCREATED", m.fmt_date(data.issue_date)),
        ]
        if data.reference is not None:
            conditions.append(m.cmp("equalto", "DOCNUMBER", data.reference))
        if data.number is not None:
            conditions.append(m.cmp("equalto", "RECORDID", data.number))
        result = await self._query(
            "ARINVOICE", m.INVOICE_FIELDS, condition=m.all_of(conditions), pagesize=50, descending=True
        )
        for invoice in await self._invoices(result.records, include_raw=False):
            if m.invoice_matches(invoice, data):
                return invoice
        return None

    async def validate_invoice(self, data: InvoiceCreate) -> list[Problem]:
        errors = ErrorCollector()
        customer = m.invoice_problems(data, errors)
        lookups = _Lookups()
        if customer is not None:
            lookups.add("CUSTOMER", "CUSTOMERID", "contact_id", customer)
        for i, line in enumerate(data.lines):
            lookups.add("GLACCOUNT", "ACCOUNTNO", f"lines[{i}].account_id", line.account_id)
            if line.location_id is not None:
                lookups.add("LOCATION", "LOCATIONID", f"lines[{i}].location_id", line.location_id)
            if line.department_id is not None:
                lookups.add("DEPARTMENT", "DEPARTMENTID", f"lines[{i}].department_id", line.department_id)
        errors.problems.extend(await self._lookup(lookups))
        return errors.problems

    # --- journals -----------------------------------------------------------------------------------

    async def list_journals(self, query: ListQuery) -> Page[Journal]:
        _check_filters(query, frozenset())
        journals, next_cursor = await self._offset_page(
            "journals",
            "GLBATCH",
            m.JOURNAL_FIELDS,
            query,
            self._updated_since(query),
            lambda records: self._journals(records, include_raw=query.include_raw),
            pagesize=_page_size(query, 200),
        )
        return Page[Journal](data=journals, next_cursor=next_cursor)

    async def _journals(self, headers: Sequence[Record], *, include_raw: bool) -> list[Journal]:
        keys = [key for key in (m.text(r, "RECORDNO") for r in headers) if key]
        # GLENTRY.BATCHNO holds the GLBATCH RECORDNO (§2.6 sample output).
        lines = await self._children("GLENTRY", m.JOURNAL_LINE_FIELDS, "BATCHNO", keys) if keys else {}
        return [
            m.journal_from_xml(r, lines.get(m.text(r, "RECORDNO") or "", []), include_raw=include_raw)
            for r in headers
        ]

    async def get_journal(self, record_id: str, *, include_raw: bool = False) -> Journal:
        if not record_id.isdigit():
            raise NotFound(f"No Sage Intacct journal {record_id!r}")
        header = m.query(
            "GLBATCH", m.JOURNAL_FIELDS, condition=m.cmp("equalto", "RECORDNO", record_id), pagesize=1
        )
        entries = m.read_by_query(
            "GLENTRY", m.JOURNAL_LINE_FIELDS, f"BATCHNO = {m.quote(record_id)}", READ_BY_QUERY_MAX_PAGE
        )
        parsed = await self._read([header, entries], "XML query:GLBATCH+readByQuery:GLENTRY")
        found = self._result(parsed, 0, "the journal query")
        if not found.records:
            raise NotFound(f"No Sage Intacct journal {record_id!r}")
        lines = self._result(parsed, 1, "the journal entry query")
        line_records = list(lines.records)
        if lines.data is not None and lines.data.numremaining and lines.data.result_id:
            line_records = (await self._children("GLENTRY", m.JOURNAL_LINE_FIELDS, "BATCHNO", [record_id]))[
                record_id
            ]
        return m.journal_from_xml(found.records[0], line_records, include_raw=include_raw)

    async def create_journal(self, data: JournalCreate, write: WriteRequest) -> Journal:
        errors = ErrorCollector()
        m.journal_problems(data, entity_scoped=bool(self.settings.entity_id), errors=errors)
        errors.raise_if_any("The journal cannot be posted to Sage Intacct")
        marker = m.guard_reference(write.guard)
        body = element("create", children=[m.glbatch_object(data, self.settings.journal_symbol, marker)])
        result, parsed = await self._write(body, write, "XML create:GLBATCH")
        if result.ok and result.records:
            recordno = m.text(result.records[0], "RECORDNO")
            if recordno:
                return await self.get_journal(recordno)
        if result.ok or is_duplicate_controlid(result):
            recordno = await self._reconcile_journal(marker)
            if recordno is None:
                raise OutcomeUnknown(
                    "Sage Intacct reported the journal as already created but it cannot be found",
                    upstream=upstream_info(200, parsed.control_id, result.errors),
                )
            return await self.get_journal(recordno)
        raise function_error(result, status=200, request_id=parsed.control_id, what="the journal")

    async def _reconcile_journal(self, marker: str) -> str | None:
        """The batch whose entries carry this guard's reference in ``DOCUMENT`` (§2.6 GLENTRY field)."""
        result = await self._query(
            "GLENTRY", ("RECORDNO", "BATCHNO"), condition=m.cmp("equalto", "DOCUMENT", marker), pagesize=1
        )
        return m.text(result.records[0], "BATCHNO") if result.records else None

    async def validate_journal(self, data: JournalCreate) -> list[Problem]:
        errors = ErrorCollector()
        m.journal_problems(data, entity_scoped=bool(self.settings.entity_id), errors=errors)
        lookups = _Lookups()
        for i, line in enumerate(data.lines):
            lookups.add("GLACCOUNT", "ACCOUNTNO", f"lines[{i}].account_id", line.account_id)
            if line.location_id is not None:
                lookups.add("LOCATION", "LOCATIONID", f"lines[{i}].location_id", line.location_id)
            if line.department_id is not None:
                lookups.add("DEPARTMENT", "DEPARTMENTID", f"lines[{i}].department_id", line.department_id)
        errors.problems.extend(await self._lookup(lookups))
        return errors.problems

    async def _lookup(self, lookups: _Lookups) -> list[Problem]:
        """Check every referenced id exists, all objects in one request (one function per object)."""
        if not lookups.wanted:
            return []
        names = list(lookups.wanted)
        bodies = [
            m.query(
                name,
                (lookups.key_fields[name],),
                condition=m.in_filter(lookups.key_fields[name], sorted(lookups.wanted[name])),
                pagesize=min(QUERY_MAX_PAGE, max(1, len(lookups.wanted[name]))),
            )
            for name in names
        ]
        parsed = await self._read(bodies, "XML query:" + "+".join(names))
        problems: list[Problem] = []
        for index, name in enumerate(names):
            result = self._result(parsed, index, f"the {name} lookup")
            found = {m.text(r, lookups.key_fields[name]) for r in result.records}
            for field_name, value in lookups.fields[name]:
                if value not in found:
                    problems.append(Problem(field_name, "not_found", f"No {name} {value!r} in Sage Intacct"))
        return problems

    # --- reference data -----------------------------------------------------------------------------

    async def list_accounts(self, query: ListQuery) -> Page[Account]:
        _check_filters(query, frozenset())

        async def build(records: Sequence[Record]) -> list[Account]:
            return [m.account_from_xml(r, include_raw=query.include_raw) for r in records]

        accounts, next_cursor = await self._offset_page(
            "accounts",
            "GLACCOUNT",
            m.ACCOUNT_FIELDS,
            query,
            self._updated_since(query),
            build,
            pagesize=_page_size(query),
        )
        return Page[Account](data=accounts, next_cursor=next_cursor)

    async def list_tax_rates(self, query: ListQuery) -> Page[TaxRate]:
        _check_filters(query, frozenset())

        async def build(records: Sequence[Record]) -> list[TaxRate]:
            return [m.tax_rate_from_xml(r, include_raw=query.include_raw) for r in records]

        rates, next_cursor = await self._offset_page(
            "tax_rates",
            "TAXDETAIL",
            m.TAX_FIELDS,
            query,
            self._updated_since(query),
            build,
            pagesize=_page_size(query),
        )
        return Page[TaxRate](data=rates, next_cursor=next_cursor)

    # --- raw proxy (CONTRACT §8) --------------------------------------------------------------------

    async def proxy_xml(self, functions: bytes) -> ProxyResponse:
        """Wrap the caller's ``<function>`` elements in the envelope with this connection's session and
        return Intacct's XML unchanged. Writes go with ``uniqueid=true`` so a re-send is refused upstream
        rather than applied twice; an "Invalid session" answer renews the session once."""
        try:
            elements = parse_functions(functions)
        except ValueError as exc:
            raise _invalid("body", str(exc)) from None
        names = []
        for fn in elements:
            body = next((child for child in fn if isinstance(child.tag, str)), None)
            names.append(str(body.tag) if body is not None else "")
        if "getAPISession" in names:
            # Its answer is a session id: the connection's secret, never handed to a caller.
            raise _invalid("body", "getAPISession is managed by LedgerBridge and cannot be proxied")
        read_only = all(name in READ_FUNCTIONS for name in names)
        exchange = await self.client.exchange(
            elements,
            kind="read" if read_only else "write",
            label="XML proxy:" + "+".join(names),
            uniqueid=not read_only,
            retry="read" if read_only else "guarded",
        )
        response = exchange.response
        return ProxyResponse(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type"),
            headers=_proxy_headers(response),
            upstream_request_id=exchange.parsed.control_id,
        )

    async def proxy(
        self, method: str, path: str, *, query: str, headers: Mapping[str, str], body: bytes
    ) -> ProxyResponse:
        """``{rest_url}/{path}`` with the connection's bearer token (CONTRACT §8). Only content
        negotiation headers are forwarded: the entity header is this connection's, never the caller's."""
        if not self.settings.rest_enabled:
            raise UnsupportedOperation(
                "This Sage Intacct connection has no REST credentials; use the XML proxy"
            )
        method = method.upper()
        read = method in ("GET", "HEAD", "OPTIONS")
        forwarded = {k.lower(): v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
        response = await self.client.rest(
            method,
            path,
            kind="read" if read else "write",
            retry="read" if read else "never",
            body=body or None,
            query=query,
            headers=forwarded,
            label=f"REST proxy {method} /{_label_path(path)}",
        )
        return ProxyResponse(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type"),
            headers=_proxy_headers(response),
            upstream_request_id=_request_id(response),
        )


def _label_path(path: str) -> str:
    """A proxied path for logs and counters: record keys become ``{key}`` to keep labels few."""
    segments = path.split("?", maxsplit=1)[0].strip("/").split("/")
    return "/".join("{key}" if segment.isdigit() else segment for segment in segments)


def _request_id(response: httpx.Response) -> str | None:
    for name, value in response.headers.items():
        if "request-id" in name.lower():
            return value
    return None


def _proxy_headers(response: httpx.Response) -> dict[str, str]:
    """Response headers a proxy caller may see: content type, retry hint and request ids."""
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower() in PROXY_RESPONSE_HEADERS or "request-id" in name.lower()
    }


class _Lookups:
    """Ids to check for existence, grouped by object (for validate)."""

    def __init__(self) -> None:
        self.wanted: dict[str, set[str]] = {}
        self.fields: dict[str, list[tuple[str, str]]] = {}
        self.key_fields: dict[str, str] = {}

    def add(self, object_name: str, key_field: str, field_name: str, value: str) -> None:
        self.wanted.setdefault(object_name, set()).add(value)
        self.fields.setdefault(object_name, []).append((field_name, value))
        self.key_fields[object_name] = key_field


__all__ = ["SageIntacctConnector"]
