"""The ``<function>`` implementations of the XML gateway (sage-intacct-wire.md §1.3, §2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

from lxml import etree

from .config import SimError
from .objects import (
    InvoiceInput,
    InvoiceLine,
    JournalInput,
    WriteError,
    create_glbatch,
    create_invoice,
    create_party,
    delete_records,
    reverse_invoice,
    update_glbatch,
    update_party,
    visible,
)
from .query import Mode, Node, QueryError, compile_node, parse_filter, parse_legacy_query, plan, sort_key
from .schema import SCHEMAS, ObjectSchema
from .store import CompanyState, Cursor
from .values import Record, Value, get_path
from .xmlio import child_text, elements, sub, text_of

READ_BY_QUERY_MAX = 1000  # §2.1 pagesize 1..1000, default 100
QUERY_MAX = 2000  # §2.2 pagesize 1..2000, default 100
READ_MAX_KEYS = 100  # §4: read keys ≤ 100 (PHP SDK validation)


@dataclass
class Session:
    session_id: str
    company_id: str
    user_id: str
    entity: str
    expires_at: float


@dataclass
class Ctx:
    company: CompanyState
    user_id: str
    entity: str
    session: Session | None
    now: datetime
    endpoint: str
    open_session: Callable[[str], Session]

    @property
    def cursor_scope(self) -> str:
        return self.session.session_id if self.session else f"login:{self.user_id}:{self.entity}"


@dataclass
class FnResult:
    status: str = "success"
    data: etree._Element | None = None
    key: str | None = None
    errors: list[SimError] = field(default_factory=list)


def failure(*errors: SimError) -> FnResult:
    return FnResult(status="failure", errors=list(errors))


def query_failed(message: str) -> FnResult:
    # PHP SDK ResultTest: <errorno>Query Failed</errorno> ... Object definition BADOBJECT not found.
    return failure(SimError("Query Failed", message))


def _schema(name: str) -> ObjectSchema | None:
    return SCHEMAS.get(name.strip().upper())


def _data(attrs: list[tuple[str, str]]) -> etree._Element:
    data = etree.Element("data")
    for key, value in attrs:
        data.set(key, value)
    return data


def _render_value(parent: etree._Element, tag: str, value: Value | None) -> None:
    if isinstance(value, dict):
        block = sub(parent, tag, None)
        for name, child in value.items():
            _render_value(block, name, child)
    else:
        sub(parent, tag, value or "")


def render_record(
    parent: etree._Element, tag: str, schema: ObjectSchema, record: Record, fields: list[str]
) -> None:
    element = sub(parent, tag, None)
    for name in fields:
        if "." in name:
            # Related/nested fields come back flat under their dotted name, like <PAYTO.TAXGROUP.NAME>
            # in fixture xml_readbyquery_apbill_with_resultid.xml.
            sub(element, name, get_path(record, name) or "")
        else:
            _render_value(element, name, record.get(name))


def parse_fields(schema: ObjectSchema, raw: str | None) -> list[str] | SimError:
    """``fields``: comma list, ``*`` or omitted = all (§2.1); unknown names fail like fixture
    xml_mixed_results_function_failure.xml (``<errorno>Invalid fields list x</errorno>``)."""
    if raw is None or raw.strip() in ("", "*"):
        return list(schema.fields)
    given = [n.strip() for n in raw.split(",") if n.strip()]
    paths = schema.all_paths()
    for name in given:
        if name.upper() not in paths:
            return SimError(f"Invalid fields list {name}", "")
    return [n.upper() for n in given]


def _object_and_fields(body: etree._Element) -> tuple[ObjectSchema, list[str]] | FnResult:
    """The ``object`` and ``fields`` of a read function, or the documented failure for either (§2.1)."""
    object_name = child_text(body, "object") or ""
    schema = _schema(object_name)
    if schema is None:
        return query_failed(f"Object definition {object_name} not found")
    fields = parse_fields(schema, child_text(body, "fields"))
    if isinstance(fields, SimError):
        return failure(fields)
    return schema, fields


def _page_size(raw: str | None, maximum: int) -> int | None:
    if raw is None or raw == "":
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        return None
    return int(raw)


def select(
    company: CompanyState, schema: ObjectSchema, node: Node | None, mode: Mode, entity: str
) -> list[int]:
    """Matching record numbers in RECORDNO order: at most one pass over the table, or over the index
    candidates when the filter pins an indexed field."""
    table = company.table(schema.name)
    predicate = compile_node(schema, node, mode)
    candidates = plan(table, node, mode)
    keys = list(candidates if candidates is not None else table.keys())
    check_entity = bool(entity) and schema.entity_scoped
    if predicate is None and not check_entity and candidates is None:
        return keys
    rows = table.rows
    out: list[int] = []
    for key in keys:
        record = rows.get(key)
        if record is None or (check_entity and record.get("MEGAENTITYID") != entity):
            continue
        if predicate is None or predicate(record):
            out.append(key)
    return out


# ------------------------------------------------------------------------------------------------ session


def fn_get_api_session(ctx: Ctx, body: etree._Element) -> FnResult:
    """§1.3: ``<getAPISession/>`` or ``<getAPISession><locationid>X</locationid>``; an empty
    ``<locationid/>`` from an entity-level session asks for a top-level session."""
    requested = child_text(body, "locationid")
    entity = ctx.entity if requested is None else requested
    if entity and entity not in ctx.company.config.entities:
        return failure(SimError("XL03000006", f"Invalid location ID {entity}", "Get API Session Failed"))
    if ctx.session is not None and ctx.session.entity == entity:
        session = ctx.session
    else:
        session = ctx.open_session(entity)
    data = _data([])
    api = sub(data, "api", None)
    sub(api, "sessionid", session.session_id)
    sub(api, "endpoint", ctx.endpoint)
    sub(api, "locationid", session.entity)
    return FnResult(data=data)


# ------------------------------------------------------------------------------------------------ reads


def _read_page(company: CompanyState, schema: ObjectSchema, cursor: Cursor) -> etree._Element:
    table = company.table(schema.name)
    start = cursor.position
    cursor.position = min(len(cursor.keys), start + cursor.pagesize)
    remaining = len(cursor.keys) - cursor.position
    records = [r for r in (table.get(k) for k in cursor.keys[start : cursor.position]) if r is not None]
    if remaining == 0:
        company.cursors.pop(cursor.result_id, None)
    # §1.4: readByQuery/readMore use the lower-case object for listtype and record elements.
    data = _data(
        [
            ("listtype", schema.lower),
            ("count", str(len(records))),
            ("totalcount", str(len(cursor.keys))),
            ("numremaining", str(remaining)),
            ("resultId", cursor.result_id),
        ]
    )
    for record in records:
        render_record(data, schema.lower, schema, record, cursor.fields)
    return data


def fn_read_by_query(ctx: Ctx, body: etree._Element) -> FnResult:
    target = _object_and_fields(body)
    if isinstance(target, FnResult):
        return target
    schema, fields = target
    pagesize = _page_size(child_text(body, "pagesize"), READ_BY_QUERY_MAX)
    if pagesize is None:
        return query_failed(f"pagesize must be between 1 and {READ_BY_QUERY_MAX}")
    return_format = (child_text(body, "returnFormat") or "xml").lower()
    if return_format != "xml":
        return query_failed(f"returnFormat {return_format} is not supported by the simulator")
    try:
        node = parse_legacy_query(child_text(body, "query") or "")
        keys = select(ctx.company, schema, node, Mode(legacy=True), ctx.entity)
    except QueryError as exc:
        return query_failed(str(exc))
    result_id = ctx.company.new_result_id() if len(keys) > pagesize else ""
    cursor = Cursor(result_id, schema.name, keys, 0, pagesize, fields)
    if result_id:
        ctx.company.add_cursor(cursor, ctx.cursor_scope)
    return FnResult(data=_read_page(ctx.company, schema, cursor))


def fn_read_more(ctx: Ctx, body: etree._Element) -> FnResult:
    """§2.1: continue by ``resultId`` (or by ``object``: the last readByQuery of this session)."""
    result_id = child_text(body, "resultId")
    object_name = child_text(body, "object")
    if not result_id and object_name:
        result_id = ctx.company.last_cursor_by_object.get((ctx.cursor_scope, object_name.upper()))
    cursor = ctx.company.cursors.get(result_id or "")
    if cursor is None:
        return query_failed(f"Invalid or expired resultId '{result_id or ''}'; no more results to read")
    return FnResult(data=_read_page(ctx.company, SCHEMAS[cursor.object_name], cursor))


def _render_listed(
    schema: ObjectSchema, records: list[Record], fields: list[str], tag: str
) -> etree._Element:
    data = _data([("listtype", tag), ("count", str(len(records)))])
    for record in records:
        render_record(data, tag, schema, record, fields)
    return data


def _read_common(ctx: Ctx, body: etree._Element, by_name: bool) -> FnResult:
    target = _object_and_fields(body)
    if isinstance(target, FnResult):
        return target
    schema, fields = target
    keys = [k.strip() for k in (child_text(body, "keys") or "").split(",") if k.strip()]
    if len(keys) > READ_MAX_KEYS:
        return query_failed(f"A maximum of {READ_MAX_KEYS} keys can be read at once")
    table = ctx.company.table(schema.name)
    if not keys:
        found = [r for r in table.records() if visible(schema, r, ctx.entity)][:READ_MAX_KEYS]
    else:
        key_field = (schema.id_field or "") if by_name else schema.read_key
        if not key_field:
            return query_failed(f"Object {schema.name} has no name to read by")
        found = []
        for key in keys:
            record = table.get(int(key)) if key_field == "RECORDNO" and key.isdigit() else None
            if key_field != "RECORDNO":
                record = table.find_id(key)
            if record is not None and visible(schema, record, ctx.entity):
                found.append(record)
    # §1.4: read/readByName use the UPPER-CASE object for listtype and record elements.
    return FnResult(data=_render_listed(schema, found, fields, schema.name))


def fn_read(ctx: Ctx, body: etree._Element) -> FnResult:
    return _read_common(ctx, body, by_name=False)


def fn_read_by_name(ctx: Ctx, body: etree._Element) -> FnResult:
    return _read_common(ctx, body, by_name=True)


def fn_query(ctx: Ctx, body: etree._Element) -> FnResult:
    """The newer ``query`` (§2.2): select/filter/orderby, pagesize ≤ 2000, offset, no resultId."""
    object_name = child_text(body, "object") or ""
    schema = _schema(object_name)
    if schema is None:
        # Recorded query failure for an unknown object (XL03000009 with this description).
        return failure(
            SimError(
                "XL03000009",
                f"Object definition {object_name} not found",
                "There was an error processing the function",
            )
        )
    select_el = body.find("select")
    if select_el is None or not elements(select_el):
        return query_failed("The select element requires at least one field")
    fields: list[str] = []
    paths = schema.all_paths()
    for item in elements(select_el):
        if item.tag != "field":
            return query_failed(f"Aggregate function {item.tag} is not supported by the simulator")
        name = text_of(item).upper()
        if name == "*" or name not in paths:
            return query_failed(f"Invalid field {text_of(item)} in select for object {schema.name}")
        fields.append(name)
    options = body.find("options")
    case_insensitive = (
        options is not None and (child_text(options, "caseinsensitive") or "").lower() == "true"
    )
    pagesize = _page_size(child_text(body, "pagesize"), QUERY_MAX)
    if pagesize is None:
        return query_failed(f"pagesize must be between 1 and {QUERY_MAX}")
    raw_offset = child_text(body, "offset") or "0"
    if not raw_offset.isdigit():
        return query_failed("offset must be an integer of 0 or more")
    offset = int(raw_offset)
    mode = Mode(legacy=False, case_insensitive=case_insensitive)
    try:
        filter_el = body.find("filter")
        node: Node | None = None
        if filter_el is not None:
            operators = elements(filter_el)
            if len(operators) != 1:
                raise QueryError("The filter element takes exactly one operator")
            node = parse_filter(operators[0])
        keys = select(ctx.company, schema, node, mode, ctx.entity)
        table = ctx.company.table(schema.name)
        records = [table.rows[k] for k in keys]
        orderby = body.find("orderby")
        if orderby is not None:
            for order in reversed(elements(orderby)):
                name = (child_text(order, "field") or "").upper()
                if name not in paths:
                    raise QueryError(f"Invalid field {name} in orderby")
                records.sort(key=sort_key(schema, name), reverse=order.find("descending") is not None)
    except QueryError as exc:
        return query_failed(str(exc))
    page = records[offset : offset + pagesize]
    tag = object_name.strip()
    data = _data(
        [
            ("listtype", tag),
            ("totalcount", str(len(records))),
            ("offset", str(offset)),
            ("count", str(len(page))),
            ("numremaining", str(max(0, len(records) - offset - len(page)))),
        ]
    )
    for record in page:
        render_record(data, tag, schema, record, fields)
    return FnResult(data=data)


# ------------------------------------------------------------------------------------------------ writes


def element_values(element: etree._Element) -> Record:
    """An UPPER-CASE object element as a record; child elements with children become nested blocks."""
    record: Record = {}
    for child in elements(element):
        record[str(child.tag)] = element_values(child) if elements(child) else (child.text or "").strip()
    return record


def journal_input(element: etree._Element) -> JournalInput:
    header: dict[str, str] = {}
    lines: list[dict[str, str]] = []
    has_entries = False
    for child in elements(element):
        if child.tag == "ENTRIES":
            has_entries = True
            for entry in elements(child):
                if entry.tag != "GLENTRY":
                    raise WriteError([SimError("BL01001973", f"Invalid element {entry.tag} in ENTRIES")])
                lines.append({str(c.tag): (c.text or "").strip() for c in elements(entry)})
        else:
            header[str(child.tag)] = (child.text or "").strip()
    return JournalInput(header, lines, has_entries)


def _id_result(parent: etree._Element, schema: ObjectSchema, record: Record) -> None:
    # Fixture xml_create_generic_success.xml: <vendor><RECORDNO>760</RECORDNO><VENDORID>…</VENDORID></vendor>
    item = sub(parent, schema.lower, None)
    sub(item, "RECORDNO", str(record.get("RECORDNO", "")))
    if schema.id_field:
        sub(item, schema.id_field, str(record.get(schema.id_field, "")))


def _write_one(ctx: Ctx, action: str, element: etree._Element) -> tuple[ObjectSchema, Record]:
    name = str(element.tag)
    schema = SCHEMAS.get(name)
    if schema is None:
        # PsIntacct Remove-IntacctObject.Tests.ps1: <errorno>WS</errorno> Object definition X not found.
        raise WriteError([SimError("WS", f"Object definition {name} not found")])
    now = ctx.now
    if name in ("CUSTOMER", "VENDOR"):
        values = element_values(element)
        if action == "create":
            return schema, create_party(ctx.company, name, values, ctx.user_id, now, require_contact=True)
        return schema, update_party(ctx.company, name, values, ctx.user_id, now)
    if name == "GLBATCH":
        data = journal_input(element)
        if action == "create":
            return schema, create_glbatch(ctx.company, data, ctx.entity, ctx.user_id, now)
        recordno = data.header.pop("RECORDNO", "")
        if not recordno:
            raise WriteError([SimError("BL01001973", "Required field RECORDNO is missing")])
        return schema, update_glbatch(ctx.company, recordno, data, ctx.entity, ctx.user_id, now)
    # §2.5: generic <create><ARINVOICE> is undocumented; the documented write path is create_invoice.
    hint = "Use create_invoice." if name == "ARINVOICE" else ""
    raise WriteError(
        [SimError("BL01001973", f"{name} cannot be written with the generic {action} function", "", hint)]
    )


def _write(ctx: Ctx, body: etree._Element, action: str) -> FnResult:
    """Generic create/update: several objects, each atomic; successes stay even when another object
    fails, as in fixture xml_create_failure_errormessage.xml (data count=1 plus errors)."""
    objects = elements(body)
    data = _data([("listtype", "objects"), ("count", "0")])
    errors: list[SimError] = []
    written = 0
    if not objects:
        errors.append(SimError("BL01001973", f"Nothing to {action}"))
    for element in objects:
        savepoint = ctx.company.savepoint()
        try:
            schema, record = _write_one(ctx, action, element)
        except WriteError as exc:
            ctx.company.rollback(savepoint)
            errors.extend(exc.errors)
            continue
        _id_result(data, schema, record)
        written += 1
    data.set("count", str(written))
    return FnResult(status="failure" if errors else "success", data=data, errors=errors)


def fn_create(ctx: Ctx, body: etree._Element) -> FnResult:
    return _write(ctx, body, "create")


def fn_update(ctx: Ctx, body: etree._Element) -> FnResult:
    return _write(ctx, body, "update")


def fn_delete(ctx: Ctx, body: etree._Element) -> FnResult:
    """Generic delete (§2.3): comma-separated RECORDNOs; status only on success (§1.4)."""
    object_name = (child_text(body, "object") or "").upper()
    if object_name not in SCHEMAS:
        return failure(SimError("WS", f"Object definition {object_name} not found"))
    if object_name not in ("CUSTOMER", "VENDOR", "GLBATCH", "ARINVOICE"):
        return failure(
            SimError("BL01001973", f"{object_name} cannot be deleted with the generic delete function")
        )
    keys = [k.strip() for k in (child_text(body, "keys") or "").split(",") if k.strip()]
    if not keys:
        return failure(SimError("BL01001973", "Required field keys is missing"))
    try:
        delete_records(ctx.company, object_name, keys, ctx.entity)
    except WriteError as exc:
        return failure(*exc.errors)
    return FnResult()


def _split_date(element: etree._Element | None) -> date | None:
    """Legacy functions take dates as <year/><month/><day/> (§2.8)."""
    if element is None:
        return None
    try:
        return date(
            int(child_text(element, "year") or ""),
            int(child_text(element, "month") or ""),
            int(child_text(element, "day") or ""),
        )
    except ValueError:
        return None


def _contact_name(element: etree._Element | None) -> str:
    if element is None:
        return ""
    return child_text(element, "contactname") or text_of(element.find("contact/contactname"))


def fn_create_invoice(ctx: Ctx, body: etree._Element) -> FnResult:
    """Legacy create_invoice (§2.5); element order was checked against the XSD before execution."""
    created = _split_date(body.find("datecreated"))
    lines = [
        InvoiceLine(
            account=child_text(item, "glaccountno") or "",
            account_label=child_text(item, "accountlabel") or "",
            amount=child_text(item, "amount") or "",
            offset_account=child_text(item, "offsetglaccountno") or "",
            memo=child_text(item, "memo") or "",
            location=child_text(item, "locationid") or "",
            department=child_text(item, "departmentid") or "",
        )
        for item in body.iterfind("invoiceitems/lineitem")
    ]
    data = InvoiceInput(
        customer_id=child_text(body, "customerid") or "",
        date_created=created,
        date_posted=_split_date(body.find("dateposted")),
        date_due=_split_date(body.find("datedue")),
        term=child_text(body, "termname") or "",
        action=child_text(body, "action") or "Submit",
        invoice_no=child_text(body, "invoiceno") or "",
        po_number=child_text(body, "ponumber") or "",
        description=child_text(body, "description") or "",
        base_currency=child_text(body, "basecurr") or "",
        currency=child_text(body, "currency") or "",
        exchange_rate=child_text(body, "exchrate") or "",
        supdoc_id=child_text(body, "supdocid") or "",
        tax_solution=child_text(body, "taxsolutionid") or "",
        bill_to=_contact_name(body.find("billto")),
        ship_to=_contact_name(body.find("shipto")),
        lines=lines,
    )
    try:
        recordno = create_invoice(ctx.company, data, ctx.entity, ctx.user_id, ctx.now)
    except WriteError as exc:
        return failure(*exc.errors)
    # Legacy creates return <key> directly in <result> (fixture xml_create_legacy_success_key.xml).
    return FnResult(key=str(recordno))


def fn_delete_invoice(ctx: Ctx, body: etree._Element) -> FnResult:
    """Legacy ``<delete_invoice key="…"/>`` (§2.5): status only, like fixture
    xml_delete_legacy_success_nodata.xml."""
    try:
        delete_records(ctx.company, "ARINVOICE", [body.get("key", "").strip()], ctx.entity)
    except WriteError as exc:
        return failure(*exc.errors)
    return FnResult()


def fn_reverse_invoice(ctx: Ctx, body: etree._Element) -> FnResult:
    """Legacy ``<reverse_invoice key="…"><datereversed>…`` (§2.5 "Reverse Invoice (Legacy)")."""
    when = _split_date(body.find("datereversed"))
    try:
        reverse_invoice(ctx.company, body.get("key", "").strip(), when, ctx.entity, ctx.user_id, ctx.now)
    except WriteError as exc:
        return failure(*exc.errors)
    return FnResult()


Handler = Callable[[Ctx, etree._Element], FnResult]

FUNCTIONS: dict[str, Handler] = {
    "getAPISession": fn_get_api_session,
    "readByQuery": fn_read_by_query,
    "readMore": fn_read_more,
    "query": fn_query,
    "read": fn_read,
    "readByName": fn_read_by_name,
    "create": fn_create,
    "update": fn_update,
    "delete": fn_delete,
    "create_invoice": fn_create_invoice,
    "delete_invoice": fn_delete_invoice,
    "reverse_invoice": fn_reverse_invoice,
}
GENERIC = frozenset({"readByQuery", "readMore", "query", "read", "readByName", "create", "update", "delete"})
