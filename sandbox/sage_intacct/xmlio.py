"""Hardened request parsing, schema validation and response building for the XML gateway."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from lxml import etree

from .config import SimError

RESPONSE_CONTENT_TYPE = 'text/xml; encoding="UTF-8"'  # SDK mocks, sage-intacct-wire.md §1.1
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# The request envelope of the v3.0 XSD (sage-intacct-wire.md §1.2). Function bodies are skipped here and
# checked by the function handlers, except create_invoice whose order is validated below.
ENVELOPE_XSD = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="request">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="control">
          <xs:complexType>
            <xs:sequence>
              <xs:element name="appid" type="xs:string" minOccurs="0"/>
              <xs:element name="senderid" type="xs:string"/>
              <xs:element name="password" type="xs:string" minOccurs="0"/>
              <xs:element name="controlid">
                <xs:simpleType>
                  <xs:restriction base="xs:string"><xs:maxLength value="256"/></xs:restriction>
                </xs:simpleType>
              </xs:element>
              <xs:element name="uniqueid" type="xs:string" minOccurs="0"/>
              <xs:element name="dtdversion" type="xs:string" minOccurs="0"/>
              <xs:element name="policyid" type="xs:string" minOccurs="0"/>
              <xs:element name="debug" type="xs:string" minOccurs="0"/>
              <xs:element name="includewhitespace" type="xs:string" minOccurs="0"/>
              <xs:element name="showadditionalerrorinfo" type="xs:string" minOccurs="0"/>
            </xs:sequence>
          </xs:complexType>
        </xs:element>
        <xs:element name="operation" maxOccurs="unbounded">
          <xs:complexType>
            <xs:sequence>
              <xs:element name="authentication">
                <xs:complexType>
                  <xs:choice>
                    <xs:element name="login">
                      <xs:complexType>
                        <xs:sequence>
                          <xs:element name="userid" type="xs:string"/>
                          <xs:element name="companyid" type="xs:string"/>
                          <xs:element name="password" type="xs:string"/>
                          <xs:element name="clientid" type="xs:string" minOccurs="0"/>
                          <xs:element name="locationid" type="xs:string" minOccurs="0"/>
                        </xs:sequence>
                      </xs:complexType>
                    </xs:element>
                    <xs:element name="sessionid" type="xs:string"/>
                    <xs:element name="oauth">
                      <xs:complexType>
                        <xs:sequence><xs:any processContents="skip" minOccurs="0" maxOccurs="unbounded"/></xs:sequence>
                      </xs:complexType>
                    </xs:element>
                  </xs:choice>
                </xs:complexType>
              </xs:element>
              <xs:element name="preferences" minOccurs="0" maxOccurs="unbounded">
                <xs:complexType>
                  <xs:sequence><xs:any processContents="skip" minOccurs="0" maxOccurs="unbounded"/></xs:sequence>
                </xs:complexType>
              </xs:element>
              <xs:element name="content" minOccurs="0" maxOccurs="unbounded">
                <xs:complexType>
                  <xs:sequence>
                    <xs:element name="function" maxOccurs="unbounded">
                      <xs:complexType>
                        <xs:sequence><xs:any processContents="skip"/></xs:sequence>
                        <xs:attribute name="controlid" type="xs:string" use="required"/>
                      </xs:complexType>
                    </xs:element>
                  </xs:sequence>
                </xs:complexType>
              </xs:element>
            </xs:sequence>
            <xs:attribute name="transaction" use="optional">
              <xs:simpleType>
                <xs:restriction base="xs:string">
                  <xs:enumeration value="true"/>
                  <xs:enumeration value="false"/>
                </xs:restriction>
              </xs:simpleType>
            </xs:attribute>
          </xs:complexType>
        </xs:element>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>"""

_TEXT = '<xs:complexType mixed="true"/>'
_DATE = (
    "<xs:complexType><xs:sequence><xs:element ref='year'/><xs:element ref='month'/>"
    "<xs:element ref='day'/></xs:sequence></xs:complexType>"
)
_TEXT_ELEMENTS = [
    "customerid",
    "termname",
    "batchkey",
    "action",
    "invoiceno",
    "ponumber",
    "description",
    "externalid",
    "basecurr",
    "currency",
    "exchratetype",
    "exchrate",
    "nogl",
    "supdocid",
    "taxsolutionid",
    "contactname",
    "customfieldname",
    "customfieldvalue",
    "accountlabel",
    "glaccountno",
    "offsetglaccountno",
    "amount",
    "allocationid",
    "memo",
    "locationid",
    "departmentid",
    "item1099",
    "form1099type",
    "form1099box",
    "key",
    "totalpaid",
    "totaldue",
    "revrectemplate",
    "defrevaccount",
    "projectid",
    "vendorid",
    "employeeid",
    "itemid",
    "classid",
    "contractid",
    "warehouseid",
    "billable",
    "year",
    "month",
    "day",
]
_DATE_ELEMENTS = ["datecreated", "dateposted", "datedue", "exchratedate", "revrecstartdate", "revrecenddate"]
_OPT = 'minOccurs="0"'


def _ref(name: str, optional: bool = True) -> str:
    return f'<xs:element ref="{name}" {_OPT if optional else ""}/>'


# create_invoice as in the v3.0 XSD (intacct_dtd v3.0/api.xsd, sage-intacct-wire.md §2.5, factcheck #12):
# an xs:sequence, so element order is enforced; taxsolutionid per the 2025 XSD. lineitem per the official
# DTD (intacct_dtd v2.1/intacct_request_objects.v2.1.dtd).
_LINEITEM_OPTIONAL = [
    "allocationid",
    "memo",
    "locationid",
    "departmentid",
    "item1099",
    "form1099type",
    "form1099box",
    "key",
    "totalpaid",
    "totaldue",
    "customfields",
    "revrectemplate",
    "defrevaccount",
    "revrecstartdate",
    "revrecenddate",
    "projectid",
    "customerid",
    "vendorid",
    "employeeid",
    "itemid",
    "classid",
    "contractid",
    "warehouseid",
    "billable",
]
CREATE_INVOICE_XSD = (
    '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
    '<xs:element name="create_invoice"><xs:complexType><xs:sequence>'
    + _ref("customerid", False)
    + _ref("datecreated", False)
    + "".join(
        _ref(n)
        for n in [
            "dateposted",
            "datedue",
            "termname",
            "batchkey",
            "action",
            "invoiceno",
            "ponumber",
            "description",
            "externalid",
        ]
    )
    + _ref("billto")
    + _ref("shipto")
    + '<xs:sequence minOccurs="0">'
    + _ref("basecurr")
    + _ref("currency", False)
    + "<xs:choice><xs:sequence>"
    + _ref("exchratedate")
    + _ref("exchratetype", False)
    + "</xs:sequence>"
    + _ref("exchrate", False)
    + "</xs:choice></xs:sequence>"
    + "".join(_ref(n) for n in ["nogl", "supdocid", "customfields", "taxsolutionid"])
    + _ref("invoiceitems", False)
    + "</xs:sequence></xs:complexType></xs:element>"
    + "".join(f'<xs:element name="{n}">{_TEXT}</xs:element>' for n in _TEXT_ELEMENTS)
    + "".join(f'<xs:element name="{n}">{_DATE}</xs:element>' for n in _DATE_ELEMENTS)
    + '<xs:element name="billto"><xs:complexType><xs:choice>'
    + '<xs:element name="contact"><xs:complexType><xs:sequence>'
    + '<xs:any processContents="skip" maxOccurs="unbounded"/></xs:sequence></xs:complexType></xs:element>'
    + _ref("contactname", False)
    + "</xs:choice></xs:complexType></xs:element>"
    + '<xs:element name="shipto"><xs:complexType><xs:choice>'
    + '<xs:element name="contact"><xs:complexType><xs:sequence>'
    + '<xs:any processContents="skip" maxOccurs="unbounded"/></xs:sequence></xs:complexType></xs:element>'
    + _ref("contactname", False)
    + "</xs:choice></xs:complexType></xs:element>"
    + '<xs:element name="customfields"><xs:complexType><xs:sequence>'
    + '<xs:element ref="customfield" minOccurs="0" maxOccurs="unbounded"/></xs:sequence></xs:complexType>'
    + "</xs:element>"
    + '<xs:element name="customfield"><xs:complexType><xs:sequence>'
    + _ref("customfieldname", False)
    + _ref("customfieldvalue", False)
    + "</xs:sequence></xs:complexType></xs:element>"
    + '<xs:element name="invoiceitems"><xs:complexType><xs:sequence>'
    + '<xs:element ref="lineitem" maxOccurs="unbounded"/></xs:sequence></xs:complexType></xs:element>'
    + '<xs:element name="lineitem"><xs:complexType><xs:sequence>'
    + "<xs:choice>"
    + _ref("accountlabel", False)
    + _ref("glaccountno", False)
    + "</xs:choice>"
    + _ref("offsetglaccountno")
    + _ref("amount", False)
    + "".join(_ref(n) for n in _LINEITEM_OPTIONAL)
    + "</xs:sequence></xs:complexType></xs:element>"
    + "</xs:schema>"
).encode()

_ENVELOPE_SCHEMA = etree.XMLSchema(etree.fromstring(ENVELOPE_XSD))
_CREATE_INVOICE_SCHEMA = etree.XMLSchema(etree.fromstring(CREATE_INVOICE_XSD))
_LEVELS = {"FATAL": "Fatal Error", "ERROR": "Error", "WARNING": "Warning"}


def new_parser() -> etree.XMLParser:
    """The hardened parser: no entity expansion, no network, no DTD loading, no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_error(entry: etree._LogEntry) -> SimError:
    """A libxml2 log entry in the gateway's words, e.g. ``XML Parse schema error: Fatal Error 76:
    Opening and ending tag mismatch: PROJECTID line 18 and PROJECT. Line: 18, column: 62.``
    (fixture xml_control_failure_xml_parse_error.xml)."""
    level = _LEVELS.get(entry.level_name, entry.level_name.title())
    message = entry.message.rstrip().rstrip(".")
    return SimError(
        "XL03000003",
        f"XML Parse schema error: {level} {entry.type}: {message}. Line: {entry.line}, column: {entry.column}.",
    )


def log_entries(log: object) -> list[etree._LogEntry]:
    """The entries of an lxml error log (iterable at runtime; the stubs do not say so)."""
    return list(cast(Iterable[etree._LogEntry], log))


def validate_request(root: etree._Element) -> list[SimError]:
    """Schema errors of the envelope and of every create_invoice (control-level, XL03000003)."""
    errors: list[SimError] = []
    if not _ENVELOPE_SCHEMA.validate(root):
        errors.extend(parse_error(e) for e in log_entries(_ENVELOPE_SCHEMA.error_log))
        return errors
    for element in root.iter("create_invoice"):
        parent = element.getparent()
        if parent is not None and parent.tag == "function" and not _CREATE_INVOICE_SCHEMA.validate(element):
            errors.extend(parse_error(e) for e in log_entries(_CREATE_INVOICE_SCHEMA.error_log))
    return errors


def sub(parent: etree._Element, tag: str, text: str | None = "") -> etree._Element:
    """A child element; empty text renders ``<tag></tag>`` as in the recorded responses."""
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = text
    return child


def errormessage(parent: etree._Element, errors: Iterable[SimError]) -> etree._Element:
    block = sub(parent, "errormessage", None)
    for error in errors:
        item = sub(block, "error", None)
        sub(item, "errorno", error.errorno)
        sub(item, "description", error.description)
        sub(item, "description2", error.description2)
        sub(item, "correction", error.correction)
    return block


def serialize(root: etree._Element, pretty: bool = True) -> bytes:
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False, pretty_print=pretty)


def text_of(element: etree._Element | None) -> str:
    return "" if element is None else (element.text or "").strip()


def child_text(element: etree._Element, tag: str) -> str | None:
    """Text of a direct child, None when the child is absent."""
    found = element.find(tag)
    return None if found is None else (found.text or "").strip()


def elements(element: etree._Element) -> list[etree._Element]:
    return [c for c in element if isinstance(c.tag, str)]
