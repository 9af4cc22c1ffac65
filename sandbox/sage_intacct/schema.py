"""Object definitions: field lists (output order for ``fields=*``), field types and query codes.

Field names follow the recorded responses and the developer docs cited per object. Where the docs do not
list a field set (ARINVOICEITEM, most of TAXDETAIL) the names are the simulator's choice and say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

FieldType = Literal["text", "number", "date", "timestamp", "bool"]

# sage-intacct-wire.md §2.8: "some stored enums use single characters in queries, e.g. STATUS = 'F'";
# readByQuery compares against the stored code, the newer ``query`` against the displayed value (§2.2).
STATUS_CODES: Mapping[str, str] = {"active": "T", "inactive": "F"}

_CONTACT = (
    "CONTACTNAME",
    "PRINTAS",
    "COMPANYNAME",
    "FIRSTNAME",
    "LASTNAME",
    "PHONE1",
    "EMAIL1",
    "EMAIL2",
    "MAILADDRESS",
)
_ADDRESS = ("ADDRESS1", "ADDRESS2", "CITY", "STATE", "ZIP", "COUNTRY", "COUNTRYCODE")
_AUDIT = ("WHENCREATED", "WHENMODIFIED", "CREATEDBY", "MODIFIEDBY")


@dataclass(frozen=True)
class ObjectSchema:
    name: str
    label: str
    fields: tuple[str, ...]
    types: Mapping[str, FieldType] = field(default_factory=dict)
    nested: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    id_field: str | None = None
    read_key: str = "RECORDNO"
    indexes: tuple[str, ...] = ()
    query_codes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    entity_scoped: bool = False
    first_recordno: int = 1

    @property
    def lower(self) -> str:
        return self.name.lower()

    def type_of(self, path: str) -> FieldType:
        return self.types.get(path, "text")

    def all_paths(self) -> frozenset[str]:
        """Every addressable field: top-level names and dotted paths into nested blocks."""
        paths: set[str] = set(self.fields)
        for prefix, children in self.nested.items():
            paths.update(f"{prefix}.{child}" for child in children)
        return frozenset(paths)


def _party(name: str, label: str, id_field: str, extra: tuple[str, ...], first: int) -> ObjectSchema:
    # sage-intacct-wire.md §2.4 (CUSTOMER/VENDOR create parameters and read fields).
    return ObjectSchema(
        name=name,
        label=label,
        fields=(
            "RECORDNO",
            id_field,
            "NAME",
            "PARENTID",
            "TERMNAME",
            "TAXID",
            "CREDITLIMIT",
            "ONHOLD",
            "ONETIME",
            "CURRENCY",
            *extra,
            "STATUS",
            "DISPLAYCONTACT",
            *_AUDIT,
        ),
        types={
            "RECORDNO": "number",
            "CREDITLIMIT": "number",
            "ONHOLD": "bool",
            "ONETIME": "bool",
            "WHENCREATED": "timestamp",
            "WHENMODIFIED": "timestamp",
        },
        nested={"DISPLAYCONTACT": _CONTACT, "DISPLAYCONTACT.MAILADDRESS": _ADDRESS},
        id_field=id_field,
        query_codes={"STATUS": STATUS_CODES},
        first_recordno=first,
    )


CUSTOMER = _party("CUSTOMER", "Customer", "CUSTOMERID", ("CUSTTYPE",), 10)
VENDOR = _party("VENDOR", "Vendor", "VENDORID", ("VENDTYPE", "BILLINGTYPE"), 30)

# developer.intacct.com/api/general-ledger/accounts/ (mirror docs/general-ledger-accounts.md): create
# parameters and "Use I for incomestatement or N for balancesheet" in readByQuery.
GLACCOUNT = ObjectSchema(
    name="GLACCOUNT",
    label="Account",
    fields=(
        "RECORDNO",
        "ACCOUNTNO",
        "TITLE",
        "ACCOUNTTYPE",
        "NORMALBALANCE",
        "CLOSINGTYPE",
        "CLOSINGACCOUNTNO",
        "CATEGORY",
        "ALTERNATIVEACCOUNT",
        "STATUS",
        "REQUIREDEPT",
        "REQUIRELOC",
        *_AUDIT,
    ),
    types={
        "RECORDNO": "number",
        "REQUIREDEPT": "bool",
        "REQUIRELOC": "bool",
        "WHENCREATED": "timestamp",
        "WHENMODIFIED": "timestamp",
    },
    id_field="ACCOUNTNO",
    query_codes={"STATUS": STATUS_CODES, "ACCOUNTTYPE": {"incomestatement": "I", "balancesheet": "N"}},
    first_recordno=1,
)

DEPARTMENT = ObjectSchema(
    name="DEPARTMENT",
    label="Department",
    fields=("RECORDNO", "DEPARTMENTID", "TITLE", "PARENTID", "STATUS", "WHENCREATED", "WHENMODIFIED"),
    types={"RECORDNO": "number", "WHENCREATED": "timestamp", "WHENMODIFIED": "timestamp"},
    id_field="DEPARTMENTID",
    query_codes={"STATUS": STATUS_CODES},
    first_recordno=1,
)

# In a multi-entity company the entities are the top-level locations; child locations name their
# entity in PARENTID.
LOCATION = ObjectSchema(
    name="LOCATION",
    label="Location",
    fields=(
        "RECORDNO",
        "LOCATIONID",
        "NAME",
        "PARENTID",
        "CURRENCY",
        "STATUS",
        "WHENCREATED",
        "WHENMODIFIED",
    ),
    types={"RECORDNO": "number", "WHENCREATED": "timestamp", "WHENMODIFIED": "timestamp"},
    id_field="LOCATIONID",
    query_codes={"STATUS": STATUS_CODES},
    first_recordno=1,
)

# developer.intacct.com/api/sales-tax-vat-gst/tax-details/: RECORDNO, DETAILID (the key of ``read``),
# TAXTYPE ("Use S for AR ... or P for AP" in readByQuery), DESCRIPTION. The remaining names are the
# simulator's choice (not in the docs read).
TAXDETAIL = ObjectSchema(
    name="TAXDETAIL",
    label="Tax Detail",
    fields=(
        "RECORDNO",
        "DETAILID",
        "TAXUID",
        "DESCRIPTION",
        "TAXTYPE",
        "VALUE",
        "GLACCOUNT",
        "TAXSOLUTIONID",
        "REVERSECHARGE",
        "STATUS",
        "WHENCREATED",
        "WHENMODIFIED",
    ),
    types={
        "RECORDNO": "number",
        "VALUE": "number",
        "REVERSECHARGE": "bool",
        "WHENCREATED": "timestamp",
        "WHENMODIFIED": "timestamp",
    },
    id_field="DETAILID",
    read_key="DETAILID",
    query_codes={"STATUS": STATUS_CODES, "TAXTYPE": {"Sale": "S", "Purchase": "P"}},
    first_recordno=1,
)

# sage-intacct-wire.md §2.5 names the ARINVOICE fields; the layout mirrors the recorded APBILL
# (fixture xml_readbyquery_apbill_with_resultid.xml): WHENCREATED is the document date, AUWHENCREATED
# the audit timestamp.
ARINVOICE = ObjectSchema(
    name="ARINVOICE",
    label="Invoice",
    fields=(
        "RECORDNO",
        "RECORDTYPE",
        "RECORDID",
        "STATE",
        "CUSTOMERID",
        "CUSTOMERNAME",
        "DOCNUMBER",
        "DESCRIPTION",
        "TERMNAME",
        "WHENCREATED",
        "WHENPOSTED",
        "WHENDUE",
        "WHENPAID",
        "BASECURR",
        "CURRENCY",
        "EXCHANGE_RATE",
        "TOTALENTERED",
        "TOTALPAID",
        "TOTALDUE",
        "TRX_TOTALENTERED",
        "TRX_TOTALPAID",
        "TRX_TOTALDUE",
        "BILLTOPAYTOCONTACTNAME",
        "SHIPTORETURNTOCONTACTNAME",
        "MODULEKEY",
        "SYSTEMGENERATED",
        "TAXSOLUTIONID",
        "SUPDOCID",
        "AUWHENCREATED",
        "WHENMODIFIED",
        "CREATEDBY",
        "MODIFIEDBY",
        "MEGAENTITYID",
        "MEGAENTITYNAME",
    ),
    types={
        "RECORDNO": "number",
        "EXCHANGE_RATE": "number",
        "TOTALENTERED": "number",
        "TOTALPAID": "number",
        "TOTALDUE": "number",
        "TRX_TOTALENTERED": "number",
        "TRX_TOTALPAID": "number",
        "TRX_TOTALDUE": "number",
        "WHENCREATED": "date",
        "WHENPOSTED": "date",
        "WHENDUE": "date",
        "WHENPAID": "date",
        "AUWHENCREATED": "timestamp",
        "WHENMODIFIED": "timestamp",
    },
    indexes=("CUSTOMERID",),
    entity_scoped=True,
    first_recordno=100,
)

# Invoice lines are their own object; RECORDKEY points at the ARINVOICE RECORDNO (§2.5: "Lines are the
# ARINVOICEITEM object"). Field names beyond RECORDKEY are the simulator's choice (not researched).
ARINVOICEITEM = ObjectSchema(
    name="ARINVOICEITEM",
    label="Invoice Item",
    fields=(
        "RECORDNO",
        "RECORDKEY",
        "RECORDTYPE",
        "LINE_NO",
        "ACCOUNTKEY",
        "ACCOUNTNO",
        "ACCOUNTTITLE",
        "OFFSETACCOUNTNO",
        "ENTRYDESCRIPTION",
        "AMOUNT",
        "TRX_AMOUNT",
        "TOTALPAID",
        "TOTALDUE",
        "LOCATIONID",
        "DEPARTMENTID",
        "ENTRY_DATE",
        "BASECURR",
        "CURRENCY",
        "WHENCREATED",
        "WHENMODIFIED",
        "MEGAENTITYID",
    ),
    types={
        "RECORDNO": "number",
        "RECORDKEY": "number",
        "LINE_NO": "number",
        "ACCOUNTKEY": "number",
        "AMOUNT": "number",
        "TRX_AMOUNT": "number",
        "TOTALPAID": "number",
        "TOTALDUE": "number",
        "ENTRY_DATE": "date",
        "WHENCREATED": "date",
        "WHENMODIFIED": "timestamp",
    },
    indexes=("RECORDKEY",),
    entity_scoped=True,
    first_recordno=1000,
)

# sage-intacct-wire.md §2.6: readByQuery GLBATCH output and the STATE query codes.
GLBATCH = ObjectSchema(
    name="GLBATCH",
    label="GLBatch",
    fields=(
        "RECORDNO",
        "BATCHNO",
        "BATCH_TITLE",
        "JOURNAL",
        "BATCH_DATE",
        "REVERSEDATE",
        "MODULE",
        "REFERENCENO",
        "HISTORY_COMMENT",
        "BASELOCATION_NO",
        "SUPDOCID",
        "STATE",
        "TAXIMPLICATIONS",
        "TAXSOLUTIONID",
        *_AUDIT,
        "MEGAENTITYID",
    ),
    types={
        "RECORDNO": "number",
        "BATCHNO": "number",
        "BATCH_DATE": "date",
        "REVERSEDATE": "date",
        "WHENCREATED": "timestamp",
        "WHENMODIFIED": "timestamp",
    },
    query_codes={
        "STATE": {
            "Draft": "I",
            "Submitted": "S",
            "Partially Approved": "X",
            "Approved": "A",
            "Posted": "P",
            "Declined": "R",
            "Reversal Pending": "L",
            "Reversed": "Z",
        }
    },
    entity_scoped=True,
    first_recordno=500,
)

# sage-intacct-wire.md §2.6 GLENTRY output: BATCHNO holds the GLBATCH RECORDNO, both AMOUNT and TRX_AMOUNT.
GLENTRY = ObjectSchema(
    name="GLENTRY",
    label="GLEntry",
    fields=(
        "RECORDNO",
        "BATCHNO",
        "LINE_NO",
        "TR_TYPE",
        "ENTRY_DATE",
        "ACCOUNTNO",
        "DOCUMENT",
        "DESCRIPTION",
        "AMOUNT",
        "TRX_AMOUNT",
        "CURRENCY",
        "EXCH_RATE_DATE",
        "EXCH_RATE_TYPE_ID",
        "EXCHANGE_RATE",
        "DEPARTMENT",
        "LOCATION",
        "CUSTOMERID",
        "VENDORID",
        "EMPLOYEEID",
        "PROJECTID",
        "ITEMID",
        "CLASSID",
        "WHENCREATED",
        "WHENMODIFIED",
        "MEGAENTITYID",
    ),
    types={
        "RECORDNO": "number",
        "BATCHNO": "number",
        "LINE_NO": "number",
        "TR_TYPE": "number",
        "AMOUNT": "number",
        "TRX_AMOUNT": "number",
        "EXCHANGE_RATE": "number",
        "ENTRY_DATE": "date",
        "EXCH_RATE_DATE": "date",
        "WHENCREATED": "timestamp",
        "WHENMODIFIED": "timestamp",
    },
    indexes=("BATCHNO",),
    entity_scoped=True,
    first_recordno=5000,
)

SCHEMAS: Mapping[str, ObjectSchema] = {
    s.name: s
    for s in (
        CUSTOMER,
        VENDOR,
        GLACCOUNT,
        DEPARTMENT,
        LOCATION,
        TAXDETAIL,
        ARINVOICE,
        ARINVOICEITEM,
        GLBATCH,
        GLENTRY,
    )
}
