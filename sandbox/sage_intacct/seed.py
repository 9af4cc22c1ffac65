"""Seed data: chart of accounts, dimensions, tax details, customers, vendors and a few AR invoices."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from .store import CompanyState
from .values import Record, fmt_date, fmt_decimal, fmt_timestamp

SEED_USER = "seed"

# (ACCOUNTNO, TITLE, ACCOUNTTYPE, NORMALBALANCE)
ACCOUNTS = (
    ("1000", "Cash", "balancesheet", "debit"),
    ("1200", "Accounts Receivable", "balancesheet", "debit"),
    ("1500", "Prepaid Expenses", "balancesheet", "debit"),
    ("2000", "Accounts Payable", "balancesheet", "credit"),
    ("2200", "Sales Tax / VAT Payable", "balancesheet", "credit"),
    ("3000", "Retained Earnings", "balancesheet", "credit"),
    ("4000", "Revenue", "incomestatement", "credit"),
    ("5000", "Cost of Goods Sold", "incomestatement", "debit"),
    ("6000", "Operating Expenses", "incomestatement", "debit"),
    ("6100", "Payroll Expense", "incomestatement", "debit"),
)
DEPARTMENTS = (("ADMIN", "Administration"), ("SALES", "Sales"), ("ENG", "Engineering"))
CUSTOMERS = (
    ("C-0001", "Acme Corporation", "ap@acme.example"),
    ("C-0002", "Globex Ltd", "billing@globex.example"),
    ("C-0003", "Initech LLC", "accounts@initech.example"),
)
VENDORS = (("V-0001", "Office Supplies Co", "sales@supplies.example"), ("V-0002", "Cloud Hosting Ltd", ""))
# (DETAILID, TAXTYPE, VALUE, DESCRIPTION)
UK_TAX_DETAILS = (
    ("UK Sale Goods Standard Rate", "Sale", "20", "Standard rate sales (20%)"),
    ("UK Sale Goods Zero Rate", "Sale", "0", "Zero rated sales"),
    ("UK Purchase Goods Standard Rate", "Purchase", "20", "Standard rate purchases (20%)"),
)
TERMS = {"N15": 15, "N30": 30, "N60": 60, "Due on Receipt": 0}
JOURNALS = ("GJ", "ADJ", "PYRJ")


def audit(now: datetime, user: str) -> Record:
    stamp = fmt_timestamp(now)
    return {"WHENCREATED": stamp, "WHENMODIFIED": stamp, "CREATEDBY": user, "MODIFIEDBY": user}


def contact(name: str, record_id: str, email: str) -> Record:
    return {
        "CONTACTNAME": f"{name}({record_id})",
        "PRINTAS": name,
        "COMPANYNAME": name,
        "FIRSTNAME": "",
        "LASTNAME": "",
        "PHONE1": "",
        "EMAIL1": email,
        "EMAIL2": "",
        "MAILADDRESS": {
            "ADDRESS1": "",
            "ADDRESS2": "",
            "CITY": "",
            "STATE": "",
            "ZIP": "",
            "COUNTRY": "",
            "COUNTRYCODE": "",
        },
    }


def party_record(
    object_name: str, recordno: int, record_id: str, name: str, email: str, now: datetime
) -> Record:
    id_field = "CUSTOMERID" if object_name == "CUSTOMER" else "VENDORID"
    record: Record = {
        "RECORDNO": str(recordno),
        id_field: record_id,
        "NAME": name,
        "PARENTID": "",
        "TERMNAME": "N30",
        "TAXID": "",
        "CREDITLIMIT": "",
        "ONHOLD": "false",
        "ONETIME": "false",
        "CURRENCY": "",
    }
    if object_name == "CUSTOMER":
        record["CUSTTYPE"] = ""
    else:
        record["VENDTYPE"] = ""
        record["BILLINGTYPE"] = "openitem"
    record["STATUS"] = "active"
    record["DISPLAYCONTACT"] = contact(name, record_id, email)
    record.update(audit(now, SEED_USER))
    return record


def seed_company(company: CompanyState, now: datetime) -> None:
    accounts = company.table("GLACCOUNT")
    for number, title, account_type, balance in ACCOUNTS:
        recordno = accounts.next_recordno()
        accounts.put(
            recordno,
            {
                "RECORDNO": str(recordno),
                "ACCOUNTNO": number,
                "TITLE": title,
                "ACCOUNTTYPE": account_type,
                "NORMALBALANCE": balance,
                "CLOSINGTYPE": "closing account"
                if account_type == "incomestatement"
                else "non-closing account",
                "CLOSINGACCOUNTNO": "3000" if account_type == "incomestatement" else "",
                "CATEGORY": "",
                "ALTERNATIVEACCOUNT": "None",
                "STATUS": "active",
                "REQUIREDEPT": "false",
                "REQUIRELOC": "false",
                **audit(now, SEED_USER),
            },
        )
    departments = company.table("DEPARTMENT")
    for department_id, title in DEPARTMENTS:
        recordno = departments.next_recordno()
        departments.put(
            recordno,
            {
                "RECORDNO": str(recordno),
                "DEPARTMENTID": department_id,
                "TITLE": title,
                "PARENTID": "",
                "STATUS": "active",
                "WHENCREATED": fmt_timestamp(now),
                "WHENMODIFIED": fmt_timestamp(now),
            },
        )
    locations = company.table("LOCATION")
    location_rows: list[tuple[str, str, str, str]] = []
    if company.multi_entity:
        for entity, currency in company.config.entities.items():
            location_rows.append((entity, f"{entity} entity", "", currency))
            location_rows.append((f"{entity}-HQ", f"{entity} head office", entity, currency))
    else:
        base = company.config.base_currency
        location_rows += [("100", "Head Office", "", base), ("200", "Branch Office", "", base)]
    for location_id, name, parent, currency in location_rows:
        recordno = locations.next_recordno()
        locations.put(
            recordno,
            {
                "RECORDNO": str(recordno),
                "LOCATIONID": location_id,
                "NAME": name,
                "PARENTID": parent,
                "CURRENCY": currency,
                "STATUS": "active",
                "WHENCREATED": fmt_timestamp(now),
                "WHENMODIFIED": fmt_timestamp(now),
            },
        )
    if company.config.tax_solution:
        taxes = company.table("TAXDETAIL")
        for detail_id, tax_type, rate, description in UK_TAX_DETAILS:
            recordno = taxes.next_recordno()
            taxes.put(
                recordno,
                {
                    "RECORDNO": str(recordno),
                    "DETAILID": detail_id,
                    "TAXUID": f"GB.{recordno}",
                    "DESCRIPTION": description,
                    "TAXTYPE": tax_type,
                    "VALUE": rate,
                    "GLACCOUNT": "2200",
                    "TAXSOLUTIONID": company.config.tax_solution,
                    "REVERSECHARGE": "false",
                    "STATUS": "active",
                    "WHENCREATED": fmt_timestamp(now),
                    "WHENMODIFIED": fmt_timestamp(now),
                },
            )
    for object_name, rows in (("CUSTOMER", CUSTOMERS), ("VENDOR", VENDORS)):
        table = company.table(object_name)
        for record_id, name, email in rows:
            recordno = table.next_recordno()
            table.put(recordno, party_record(object_name, recordno, record_id, name, email, now))
    entities = list(company.config.entities) or [""]
    for n in range(3):
        entity = entities[n % len(entities)]
        customer_id = CUSTOMERS[n][0]
        lines = [(Decimal("100.00") * (n + 1), "4000"), (Decimal("25.50"), "4000")]
        add_invoice(company, now, customer_id, date(now.year, 1, 10 + n), f"INV-{n + 1:04d}", lines, entity)
    company.commit()


def add_invoice(
    company: CompanyState,
    now: datetime,
    customer_id: str,
    invoice_date: date,
    invoice_no: str,
    lines: list[tuple[Decimal, str]],
    entity: str,
    user: str = SEED_USER,
    *,
    state: str = "Posted",
    term: str = "N30",
    due: date | None = None,
    extra: Record | None = None,
    line_extra: list[Record] | None = None,
) -> int:
    """Insert one ARINVOICE with its ARINVOICEITEM lines; returns the invoice RECORDNO."""
    customers = company.table("CUSTOMER")
    invoices = company.table("ARINVOICE")
    items = company.table("ARINVOICEITEM")
    accounts = company.table("GLACCOUNT")
    customer = customers.find_id(customer_id)
    customer_name = str(customer.get("NAME", "")) if customer else ""
    currency = company.config.entities.get(entity, company.config.base_currency)
    total = sum((amount for amount, _ in lines), Decimal(0))
    due_date = due or invoice_date + timedelta(days=TERMS.get(term, 30))
    stamp = fmt_timestamp(now)
    recordno = invoices.next_recordno()
    invoice: Record = {
        "RECORDNO": str(recordno),
        "RECORDTYPE": "ri",
        "RECORDID": invoice_no,
        "STATE": state,
        "CUSTOMERID": customer_id,
        "CUSTOMERNAME": customer_name,
        "DOCNUMBER": "",
        "DESCRIPTION": "",
        "TERMNAME": term,
        "WHENCREATED": fmt_date(invoice_date),
        "WHENPOSTED": fmt_date(invoice_date),
        "WHENDUE": fmt_date(due_date),
        "WHENPAID": "",
        "BASECURR": currency,
        "CURRENCY": currency,
        "EXCHANGE_RATE": "",
        "TOTALENTERED": fmt_decimal(total),
        "TOTALPAID": "0",
        "TOTALDUE": fmt_decimal(total),
        "TRX_TOTALENTERED": fmt_decimal(total),
        "TRX_TOTALPAID": "0",
        "TRX_TOTALDUE": fmt_decimal(total),
        "BILLTOPAYTOCONTACTNAME": customer_name,
        "SHIPTORETURNTOCONTACTNAME": customer_name,
        "MODULEKEY": "4.AR",
        "SYSTEMGENERATED": "F",
        "TAXSOLUTIONID": "",
        "SUPDOCID": "",
        "AUWHENCREATED": stamp,
        "WHENMODIFIED": stamp,
        "CREATEDBY": user,
        "MODIFIEDBY": user,
        "MEGAENTITYID": entity,
        "MEGAENTITYNAME": f"{entity} entity" if entity else "",
    }
    if extra:
        invoice.update(extra)
    invoices.put(recordno, invoice)
    for number, (amount, account_no) in enumerate(lines, start=1):
        account = accounts.find_id(account_no)
        item_no = items.next_recordno()
        item: Record = {
            "RECORDNO": str(item_no),
            "RECORDKEY": str(recordno),
            "RECORDTYPE": "ri",
            "LINE_NO": str(number),
            "ACCOUNTKEY": str(account.get("RECORDNO", "")) if account else "",
            "ACCOUNTNO": account_no,
            "ACCOUNTTITLE": str(account.get("TITLE", "")) if account else "",
            "OFFSETACCOUNTNO": "1200",
            "ENTRYDESCRIPTION": "",
            "AMOUNT": fmt_decimal(amount),
            "TRX_AMOUNT": fmt_decimal(amount),
            "TOTALPAID": "0",
            "TOTALDUE": fmt_decimal(amount),
            "LOCATIONID": "",
            "DEPARTMENTID": "",
            "ENTRY_DATE": fmt_date(invoice_date),
            "BASECURR": currency,
            "CURRENCY": currency,
            "WHENCREATED": fmt_date(invoice_date),
            "WHENMODIFIED": stamp,
            "MEGAENTITYID": entity,
        }
        if line_extra and number <= len(line_extra):
            item.update(line_extra[number - 1])
        items.put(item_no, item)
    return recordno
