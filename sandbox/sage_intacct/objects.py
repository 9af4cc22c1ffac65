"""Business rules of the writable objects, shared by the XML functions and the REST API.

Error numbers and texts follow sage-intacct-wire.md §1.5 where recorded: a specific error followed by
``BL01001973 Could not create <object> record!`` (fixture xml_create_failure_errormessage.xml), the
duplicate ``BL34000061`` text, ``Cannot find <object> with key '<k>' to delete.``. Texts for rules the
docs state without a recorded message (required fields, balance, multi-entity LOCATION) are the
simulator's wording.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from .config import SimError
from .schema import SCHEMAS, ObjectSchema
from .seed import JOURNALS, TERMS, add_invoice
from .store import CompanyState, Table
from .values import (
    Record,
    Value,
    fmt_date,
    fmt_decimal,
    fmt_timestamp,
    get_path,
    parse_date,
    parse_decimal,
    round_cents,
)

READ_ONLY = frozenset({"RECORDNO", "WHENCREATED", "WHENMODIFIED", "CREATEDBY", "MODIFIEDBY"})


class WriteError(Exception):
    def __init__(self, errors: list[SimError]) -> None:
        super().__init__("; ".join(e.description2 for e in errors))
        self.errors = errors


def could_not(action: str, schema: ObjectSchema) -> SimError:
    return SimError("BL01001973", f"Could not {action} {schema.label.lower()} record!")


def fail(action: str, schema: ObjectSchema, message: str, correction: str = "") -> WriteError:
    return WriteError([SimError("BL01001973", message, correction=correction), could_not(action, schema)])


def not_found(schema: ObjectSchema, key: str, action: str) -> WriteError:
    # PsIntacct Remove-IntacctObject.Tests.ps1: "Cannot find customer with key '99999' to delete."
    return WriteError(
        [SimError("BL01001973", f"Cannot find {schema.label.lower()} with key '{key}' to {action}.")]
    )


def visible(schema: ObjectSchema, record: Record, entity: str) -> bool:
    """An entity-level session sees its own entity's transactions; top level sees all."""
    return not (entity and schema.entity_scoped and get_path(record, "MEGAENTITYID") != entity)


# ---------------------------------------------------------------------------------------------- parties


def _blank_contact() -> dict[str, Value]:
    nested = SCHEMAS["CUSTOMER"].nested
    contact: dict[str, Value] = {name: "" for name in nested["DISPLAYCONTACT"]}
    contact["MAILADDRESS"] = {name: "" for name in nested["DISPLAYCONTACT.MAILADDRESS"]}
    return contact


def _merge(schema: ObjectSchema, prefix: str, target: dict[str, Value], changes: dict[str, Value]) -> None:
    allowed = schema.nested[prefix]
    for name, value in changes.items():
        if name not in allowed:
            raise fail("update", schema, f"Invalid field {prefix}.{name} for object {schema.name}")
        if isinstance(value, dict):
            child_prefix = f"{prefix}.{name}"
            if child_prefix not in schema.nested:
                raise fail("update", schema, f"Field {child_prefix} is not a block")
            child = target.get(name)
            merged: dict[str, Value] = dict(child) if isinstance(child, dict) else {}
            _merge(schema, child_prefix, merged, value)
            target[name] = merged
        else:
            if f"{prefix}.{name}" in schema.nested:
                raise fail("update", schema, f"Field {prefix}.{name} must contain elements")
            target[name] = value


def _apply_party_fields(
    company: CompanyState, schema: ObjectSchema, record: Record, changes: Record, action: str
) -> None:
    writable = set(schema.fields) - READ_ONLY
    for name, value in changes.items():
        if name not in writable:
            raise fail(action, schema, f"Invalid field {name} for object {schema.name}")
        if name == "DISPLAYCONTACT":
            if not isinstance(value, dict):
                raise fail(action, schema, "DISPLAYCONTACT must contain contact elements")
            current = record.get("DISPLAYCONTACT")
            contact = copy.deepcopy(current) if isinstance(current, dict) else _blank_contact()
            _merge(schema, "DISPLAYCONTACT", contact, value)
            record["DISPLAYCONTACT"] = contact
            continue
        if not isinstance(value, str):
            raise fail(action, schema, f"Field {name} takes a value, not elements")
        text = value.strip()
        if name == "STATUS" and text not in ("active", "inactive"):
            raise fail(action, schema, f"Invalid STATUS '{text}'", "Use active or inactive.")
        if name in ("ONHOLD", "ONETIME") and text not in ("true", "false"):
            raise fail(action, schema, f"Invalid {name} '{text}'", "Use true or false.")
        if name == "CREDITLIMIT" and text:
            amount = parse_decimal(text)
            if amount is None:
                raise fail(action, schema, f"Invalid CREDITLIMIT '{text}'")
            text = fmt_decimal(amount)
        if name == "TERMNAME" and text and text not in TERMS:
            raise fail(action, schema, f"Invalid term '{text}'")
        if name == "PARENTID" and text and company.table(schema.name).find_id(text) is None:
            raise fail(action, schema, f"Invalid parent {schema.label.lower()} '{text}'")
        record[name] = text


def create_party(
    company: CompanyState,
    object_name: str,
    values: Record,
    user: str,
    now: datetime,
    *,
    require_contact: bool,
) -> Record:
    """Generic create of CUSTOMER/VENDOR (sage-intacct-wire.md §2.4)."""
    schema = SCHEMAS[object_name]
    table = company.table(object_name)
    id_field = schema.id_field or ""
    name = values.get("NAME")
    if not isinstance(name, str) or not name.strip():
        raise fail("create", schema, "Required field NAME is missing")
    if require_contact and "DISPLAYCONTACT" not in values:
        # §2.4 marks DISPLAYCONTACT required on create.
        raise fail("create", schema, "Required field DISPLAYCONTACT is missing")
    requested_id = values.get(id_field)
    record_id = requested_id.strip() if isinstance(requested_id, str) else ""
    if record_id and table.find_id(record_id) is not None:
        raise WriteError(
            [
                SimError(
                    "BL34000061",
                    f"Another {schema.label} with the given value(s) {record_id}  already exists",
                    correction="Use a unique value instead.",
                ),
                could_not("create", schema),
            ]
        )
    recordno = table.next_recordno()
    if not record_id:
        # Document sequencing is on in the simulator: an omitted id is numbered (§2.4 "optional if
        # document sequencing").
        prefix = "C" if object_name == "CUSTOMER" else "V"
        n = recordno
        while table.find_id(f"{prefix}-{n:04d}") is not None:
            n += 1
        record_id = f"{prefix}-{n:04d}"
    record: Record = {f: "" for f in schema.fields}
    record.update({"RECORDNO": str(recordno), id_field: record_id, "STATUS": "active"})
    record.update({"ONHOLD": "false", "ONETIME": "false", "DISPLAYCONTACT": _blank_contact()})
    if object_name == "VENDOR":
        record["BILLINGTYPE"] = "openitem"
    changes = {k: v for k, v in values.items() if k != id_field}
    _apply_party_fields(company, schema, record, changes, "create")
    contact = record["DISPLAYCONTACT"]
    if isinstance(contact, dict):
        if not contact.get("CONTACTNAME"):
            contact["CONTACTNAME"] = f"{record['NAME']}({record_id})"
        if not contact.get("PRINTAS"):
            contact["PRINTAS"] = str(record["NAME"])
    stamp = fmt_timestamp(now)
    record.update({"WHENCREATED": stamp, "WHENMODIFIED": stamp, "CREATEDBY": user, "MODIFIEDBY": user})
    table.put(recordno, record)
    return record


def find_party(company: CompanyState, object_name: str, values: Record, action: str) -> Record:
    """The record an update addresses: RECORDNO, else the id field (§2.4 update rules)."""
    schema = SCHEMAS[object_name]
    table = company.table(object_name)
    recordno = values.get("RECORDNO")
    if isinstance(recordno, str) and recordno.strip():
        found = table.get(int(recordno)) if recordno.strip().isdigit() else None
        if found is None:
            raise not_found(schema, recordno.strip(), action)
        return found
    id_value = values.get(schema.id_field or "")
    if isinstance(id_value, str) and id_value.strip():
        found = table.find_id(id_value.strip())
        if found is None:
            raise not_found(schema, id_value.strip(), action)
        return found
    raise fail(action, schema, f"Required field RECORDNO or {schema.id_field} is missing")


def update_party(company: CompanyState, object_name: str, values: Record, user: str, now: datetime) -> Record:
    schema = SCHEMAS[object_name]
    current = find_party(company, object_name, values, "update")
    record = copy.deepcopy(current)
    id_field = schema.id_field or ""
    changes = {k: v for k, v in values.items() if k not in ("RECORDNO", id_field)}
    new_id = values.get(id_field)
    if isinstance(values.get("RECORDNO"), str) and isinstance(new_id, str) and new_id.strip():
        other = company.table(object_name).find_id(new_id.strip())
        if other is not None and other is not current:
            raise fail(
                "update", schema, f"Another {schema.label} with the given value(s) {new_id}  already exists"
            )
        record[id_field] = new_id.strip()
    if "NAME" in changes and not str(changes["NAME"]).strip():
        raise fail("update", schema, "Required field NAME is missing")
    _apply_party_fields(company, schema, record, changes, "update")
    record["WHENMODIFIED"] = fmt_timestamp(now)
    record["MODIFIEDBY"] = user
    company.table(object_name).put(int(str(record["RECORDNO"])), record)
    return record


def delete_records(company: CompanyState, object_name: str, keys: list[str], entity: str) -> None:
    """Generic delete by RECORDNO list; children (invoice items, GL entries) go with their parent."""
    schema = SCHEMAS[object_name]
    table = company.table(object_name)
    for key in keys:
        record = table.get(int(key)) if key.isdigit() else None
        if record is None or not visible(schema, record, entity):
            raise not_found(schema, key, "delete")
        customer_id = str(record.get("CUSTOMERID", ""))
        if object_name == "CUSTOMER" and company.table("ARINVOICE").lookup("CUSTOMERID", customer_id):
            raise fail("delete", schema, f"Customer {customer_id} has transactions and cannot be deleted")
        table.delete(int(key))
        _delete_children(company, object_name, key)


def _delete_children(company: CompanyState, object_name: str, key: str) -> None:
    child = {"ARINVOICE": ("ARINVOICEITEM", "RECORDKEY"), "GLBATCH": ("GLENTRY", "BATCHNO")}.get(object_name)
    if child:
        table = company.table(child[0])
        for recordno in table.lookup(child[1], key):
            table.delete(recordno)


# ---------------------------------------------------------------------------------------------- GLBATCH

GLBATCH_FIELDS = frozenset(
    [
        "JOURNAL",
        "BATCH_DATE",
        "REVERSEDATE",
        "BATCH_TITLE",
        "HISTORY_COMMENT",
        "REFERENCENO",
        "BASELOCATION_NO",
        "SUPDOCID",
        "STATE",
        "TAXIMPLICATIONS",
        "TAXSOLUTIONID",
    ]
)
GLENTRY_FIELDS = frozenset(
    [
        "DOCUMENT",
        "ACCOUNTNO",
        "CURRENCY",
        "TRX_AMOUNT",
        "AMOUNT",
        "TR_TYPE",
        "EXCH_RATE_DATE",
        "EXCH_RATE_TYPE_ID",
        "EXCHANGE_RATE",
        "DESCRIPTION",
        "ALLOCATION",
        "DEPARTMENT",
        "LOCATION",
        "PROJECTID",
        "TASKID",
        "COSTTYPEID",
        "CUSTOMERID",
        "VENDORID",
        "EMPLOYEEID",
        "ITEMID",
        "CLASSID",
        "CONTRACTID",
        "WAREHOUSEID",
        "BILLABLE",
    ]
)


@dataclass
class JournalInput:
    header: dict[str, str]
    lines: list[dict[str, str]] = field(default_factory=list)
    has_entries: bool = True


def _check_location(
    company: CompanyState, schema: ObjectSchema, action: str, location: str, entity: str, where: str
) -> None:
    if company.table("LOCATION").find_id(location) is None:
        raise fail(action, schema, f"Invalid Location {location} {where}")
    if entity and company.location_entity(location) != entity:
        raise fail(action, schema, f"Location {location} {where} does not belong to entity {entity}")


def _journal_lines(
    company: CompanyState,
    data: JournalInput,
    entity: str,
    action: str,
    batch_date: date,
    base_location: str,
) -> list[Record]:
    schema = SCHEMAS["GLBATCH"]
    if len(data.lines) < 2:
        # §2.6: "ENTRIES = GLENTRY[2..n]" / "Must have at least two lines (one debit, one credit)".
        raise fail(action, schema, "A journal entry must have at least two lines (one debit, one credit)")
    debit = credit = Decimal(0)
    by_entity: dict[str, Decimal] = {}  # entity -> debits minus credits
    lines: list[Record] = []
    currency = company.config.entities.get(entity, company.config.base_currency)
    for number, line in enumerate(data.lines, start=1):
        where = f"on line {number}"
        unknown = sorted(set(line) - GLENTRY_FIELDS)
        if unknown:
            raise fail(action, schema, f"Invalid field {unknown[0]} in GLENTRY {where}")
        account = line.get("ACCOUNTNO", "")
        if not account:
            raise fail(action, schema, f"Required field ACCOUNTNO is missing {where}")
        if company.table("GLACCOUNT").find_id(account) is None:
            raise fail(action, schema, f"Invalid account number {account} {where}")
        tr_type = line.get("TR_TYPE", "")
        if tr_type not in ("1", "-1"):
            # §2.6: "TR_TYPE ... 1 for Debit, otherwise -1 for Credit".
            raise fail(
                action, schema, f"Invalid TR_TYPE '{tr_type}' {where}", "Use 1 for debit or -1 for credit."
            )
        # §2.6 conflict: the parameter table requires TRX_AMOUNT, the examples send AMOUNT; accept both.
        raw_amount = line.get("TRX_AMOUNT") or line.get("AMOUNT") or ""
        amount = parse_decimal(raw_amount)
        if amount is None:
            raise fail(action, schema, f"Required field TRX_AMOUNT is missing or invalid {where}")
        if amount < 0:
            raise fail(action, schema, f"TRX_AMOUNT must be an absolute value {where}")
        amount = round_cents(amount)
        department = line.get("DEPARTMENT", "")
        if department and company.table("DEPARTMENT").find_id(department) is None:
            raise fail(action, schema, f"Invalid Department {department} {where}")
        location = line.get("LOCATION", "")
        if company.multi_entity and not location:
            # §2.6: LOCATION "Required if multi-entity enabled" (factcheck #13).
            raise fail(
                action, schema, f"Required field LOCATION is missing {where} in a multi-entity company"
            )
        if location:
            _check_location(company, schema, action, location, entity, where)
        for dim, object_name in (("CUSTOMERID", "CUSTOMER"), ("VENDORID", "VENDOR")):
            value = line.get(dim, "")
            if value and company.table(object_name).find_id(value) is None:
                raise fail(action, schema, f"Invalid {dim} {value} {where}")
        if tr_type == "1":
            debit += amount
        else:
            credit += amount
        if company.multi_entity:
            owner = company.location_entity(location) or location
            by_entity[owner] = by_entity.get(owner, Decimal(0)) + (amount if tr_type == "1" else -amount)
        lines.append(
            {
                "LINE_NO": str(number),
                "TR_TYPE": tr_type,
                "ENTRY_DATE": fmt_date(batch_date),
                "ACCOUNTNO": account,
                "DOCUMENT": line.get("DOCUMENT", ""),
                "DESCRIPTION": line.get("DESCRIPTION", ""),
                "AMOUNT": fmt_decimal(amount),
                "TRX_AMOUNT": fmt_decimal(amount),
                "CURRENCY": line.get("CURRENCY") or currency,
                "EXCH_RATE_DATE": line.get("EXCH_RATE_DATE", ""),
                "EXCH_RATE_TYPE_ID": line.get("EXCH_RATE_TYPE_ID", ""),
                "EXCHANGE_RATE": line.get("EXCHANGE_RATE", ""),
                "DEPARTMENT": department,
                "LOCATION": location,
                "CUSTOMERID": line.get("CUSTOMERID", ""),
                "VENDORID": line.get("VENDORID", ""),
                "EMPLOYEEID": line.get("EMPLOYEEID", ""),
                "PROJECTID": line.get("PROJECTID", ""),
                "ITEMID": line.get("ITEMID", ""),
                "CLASSID": line.get("CLASSID", ""),
            }
        )
    if debit != credit:
        raise fail(
            action,
            schema,
            f"The transaction is out of balance: debits {fmt_decimal(debit)} do not equal credits "
            f"{fmt_decimal(credit)}",
            "Make sure the total of the debit lines equals the total of the credit lines.",
        )
    unbalanced = sorted(name for name, net in by_entity.items() if net != 0)
    if unbalanced and not base_location:
        # factcheck.md §13 (developer.intacct.com journal-entries table): BASELOCATION_NO "is required in
        # multi-entity when entries do not balance by entity". Only a top-level batch can get here: an
        # entity-level one has every line in its own entity. The wording is the simulator's.
        raise fail(
            action,
            schema,
            f"Required field BASELOCATION_NO is missing: the entries do not balance by entity "
            f"({', '.join(unbalanced)})",
            "Give BASELOCATION_NO, or make the debits equal the credits within each entity.",
        )
    return lines


def _journal_header(
    company: CompanyState, header: dict[str, str], action: str
) -> tuple[dict[str, str], date]:
    schema = SCHEMAS["GLBATCH"]
    unknown = sorted(set(header) - GLBATCH_FIELDS)
    if unknown:
        raise fail(action, schema, f"Invalid field {unknown[0]} for object GLBATCH")
    journal = header.get("JOURNAL", "")
    if not journal:
        raise fail(action, schema, "Required field JOURNAL is missing")
    if journal not in JOURNALS:
        raise fail(action, schema, f"Invalid Journal {journal}")
    raw_date = header.get("BATCH_DATE", "")
    batch_date = parse_date(raw_date) if raw_date else None
    if batch_date is None:
        # §2.6: BATCH_DATE "Posting date in format mm/dd/yyyy".
        raise fail(
            action,
            schema,
            f"Required field BATCH_DATE is missing or invalid: '{raw_date}'",
            "Use mm/dd/yyyy.",
        )
    if not header.get("BATCH_TITLE"):
        raise fail(action, schema, "Required field BATCH_TITLE is missing")
    reverse = header.get("REVERSEDATE", "")
    if reverse and parse_date(reverse) is None:
        raise fail(action, schema, f"Invalid REVERSEDATE '{reverse}'", "Use mm/dd/yyyy.")
    state = header.get("STATE") or "Posted"
    if state not in ("Posted", "Draft"):
        raise fail(action, schema, f"Invalid STATE '{state}'", "Use Posted or Draft.")
    base_location = header.get("BASELOCATION_NO", "")
    if base_location and company.table("LOCATION").find_id(base_location) is None:
        raise fail(action, schema, f"Invalid BASELOCATION_NO {base_location}")
    values = {name: header.get(name, "") for name in GLBATCH_FIELDS}
    values["STATE"] = state
    values["BATCH_DATE"] = fmt_date(batch_date)
    if reverse:
        values["REVERSEDATE"] = fmt_date(parse_date(reverse) or batch_date)
    return values, batch_date


def _write_entries(
    company: CompanyState, batch_recordno: int, lines: list[Record], entity: str, stamp: str
) -> None:
    entries = company.table("GLENTRY")
    for line in lines:
        recordno = entries.next_recordno()
        record: Record = {"RECORDNO": str(recordno), "BATCHNO": str(batch_recordno)}
        record.update(line)
        record.update({"WHENCREATED": stamp, "WHENMODIFIED": stamp, "MEGAENTITYID": entity})
        entries.put(recordno, {name: record.get(name, "") for name in SCHEMAS["GLENTRY"].fields})


def create_glbatch(
    company: CompanyState, data: JournalInput, entity: str, user: str, now: datetime
) -> Record:
    header, batch_date = _journal_header(company, data.header, "create")
    lines = _journal_lines(company, data, entity, "create", batch_date, header["BASELOCATION_NO"])
    table = company.table("GLBATCH")
    recordno = table.next_recordno()
    stamp = fmt_timestamp(now)
    record: Record = {name: "" for name in SCHEMAS["GLBATCH"].fields}
    record.update(header)
    record.update(
        {
            "RECORDNO": str(recordno),
            "BATCHNO": str(next(company.batch_numbers)),
            "MODULE": "2.GL",
            "WHENCREATED": stamp,
            "WHENMODIFIED": stamp,
            "CREATEDBY": user,
            "MODIFIEDBY": user,
            "MEGAENTITYID": entity,
        }
    )
    table.put(recordno, record)
    _write_entries(company, recordno, lines, entity, stamp)
    return record


def update_glbatch(
    company: CompanyState, recordno: str, data: JournalInput, entity: str, user: str, now: datetime
) -> Record:
    """§2.6: "To add an entry, supply all the original entries along with the new one"."""
    schema = SCHEMAS["GLBATCH"]
    table = company.table("GLBATCH")
    current = table.get(int(recordno)) if recordno.isdigit() else None
    if current is None or not visible(schema, current, entity):
        raise not_found(schema, recordno, "update")
    merged_header = {k: str(v) for k, v in current.items() if k in GLBATCH_FIELDS}
    merged_header.update(data.header)
    header, batch_date = _journal_header(company, merged_header, "update")
    if data.has_entries:
        lines = _journal_lines(company, data, entity, "update", batch_date, header["BASELOCATION_NO"])
    else:
        existing = [
            company.table("GLENTRY").get(n) for n in company.table("GLENTRY").lookup("BATCHNO", recordno)
        ]
        lines = [dict(r) for r in existing if r is not None]
    stamp = fmt_timestamp(now)
    record = dict(current)
    record.update(header)
    record.update({"WHENMODIFIED": stamp, "MODIFIEDBY": user})
    table.put(int(recordno), record)
    entries = company.table("GLENTRY")
    for old in entries.lookup("BATCHNO", recordno):
        entries.delete(old)
    _write_entries(company, int(recordno), lines, str(current.get("MEGAENTITYID", "")), stamp)
    return record


# ---------------------------------------------------------------------------------------------- ARINVOICE


@dataclass
class InvoiceLine:
    account: str
    account_label: str
    amount: str
    offset_account: str = ""
    memo: str = ""
    location: str = ""
    department: str = ""


@dataclass
class InvoiceInput:
    customer_id: str
    date_created: date | None
    date_posted: date | None = None
    date_due: date | None = None
    term: str = ""
    action: str = "Submit"
    invoice_no: str = ""
    po_number: str = ""
    description: str = ""
    base_currency: str = ""
    currency: str = ""
    exchange_rate: str = ""
    supdoc_id: str = ""
    tax_solution: str = ""
    bill_to: str = ""
    ship_to: str = ""
    lines: list[InvoiceLine] = field(default_factory=list)


def create_invoice(company: CompanyState, data: InvoiceInput, entity: str, user: str, now: datetime) -> int:
    """Legacy create_invoice (sage-intacct-wire.md §2.5); returns the new RECORDNO (the ``<key>``)."""
    schema = SCHEMAS["ARINVOICE"]
    customer = company.table("CUSTOMER").find_id(data.customer_id)
    if customer is None:
        raise fail("create", schema, f"Invalid Customer '{data.customer_id}' specified.")
    if data.date_created is None:
        raise fail("create", schema, "Invalid date in datecreated")
    if data.term and data.term not in TERMS:
        raise fail("create", schema, f"Invalid term '{data.term}'")
    if data.date_due is None and not data.term:
        # §2.5: one of datedue/termname is required; text as recorded by an integrator.
        raise fail("create", schema, "Required field Date Due is missing")
    if data.action not in ("Draft", "Submit"):
        raise fail("create", schema, f"Invalid action '{data.action}'", "Use Draft or Submit.")
    lines: list[tuple[Decimal, str]] = []
    line_extra: list[Record] = []
    accounts = company.table("GLACCOUNT")
    for number, line in enumerate(data.lines, start=1):
        where = f"on line {number}"
        if line.account_label:
            raise fail("create", schema, f"Invalid account label '{line.account_label}' {where}")
        if accounts.find_id(line.account) is None:
            raise fail("create", schema, f"Invalid GL account '{line.account}' {where}")
        if line.offset_account and accounts.find_id(line.offset_account) is None:
            raise fail("create", schema, f"Invalid offset GL account '{line.offset_account}' {where}")
        amount = parse_decimal(line.amount)
        if amount is None:
            raise fail("create", schema, f"Invalid amount '{line.amount}' {where}")
        if line.department and company.table("DEPARTMENT").find_id(line.department) is None:
            raise fail("create", schema, f"Invalid Department {line.department} {where}")
        if line.location:
            _check_location(company, schema, "create", line.location, entity, where)
        # §2.5: "Amounts >2 decimals are rounded".
        lines.append((round_cents(amount), line.account))
        line_extra.append(
            {
                "ENTRYDESCRIPTION": line.memo,
                "LOCATIONID": line.location,
                "DEPARTMENTID": line.department,
                "OFFSETACCOUNTNO": line.offset_account or "1200",
            }
        )
    currency = data.currency or company.config.entities.get(entity, company.config.base_currency)
    extra: Record = {
        "DOCNUMBER": data.po_number,
        "DESCRIPTION": data.description,
        "BASECURR": data.base_currency or company.config.entities.get(entity, company.config.base_currency),
        "CURRENCY": currency,
        "EXCHANGE_RATE": data.exchange_rate,
        "SUPDOCID": data.supdoc_id,
        "TAXSOLUTIONID": data.tax_solution,
    }
    if data.date_posted:
        extra["WHENPOSTED"] = fmt_date(data.date_posted)
    if data.bill_to:
        extra["BILLTOPAYTOCONTACTNAME"] = data.bill_to
    if data.ship_to:
        extra["SHIPTORETURNTOCONTACTNAME"] = data.ship_to
    for line_record in line_extra:
        line_record["CURRENCY"] = currency
    due = data.date_due or data.date_created + timedelta(days=TERMS.get(data.term, 30))
    return add_invoice(
        company,
        now,
        data.customer_id,
        data.date_created,
        data.invoice_no,
        lines,
        entity,
        user,
        state="Draft" if data.action == "Draft" else "Posted",
        term=data.term,
        due=due,
        extra=extra,
        line_extra=line_extra,
    )


def reverse_invoice(
    company: CompanyState, key: str, when: date | None, entity: str, user: str, now: datetime
) -> None:
    schema = SCHEMAS["ARINVOICE"]
    table: Table = company.table("ARINVOICE")
    current = table.get(int(key)) if key.isdigit() else None
    if current is None or not visible(schema, current, entity):
        raise not_found(schema, key, "reverse")
    if when is None:
        raise fail("reverse", schema, "Invalid date in datereversed")
    if current.get("STATE") in ("Reversed", "Draft"):
        raise fail("reverse", schema, f"Invoice {key} in state {current.get('STATE')} cannot be reversed")
    record = dict(current)
    record.update({"STATE": "Reversed", "WHENMODIFIED": fmt_timestamp(now), "MODIFIEDBY": user})
    table.put(int(key), record)
