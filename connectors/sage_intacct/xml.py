"""Hardened XML for the Sage Intacct XML gateway: request envelopes out, typed responses in.

Responses are parsed with entities, DTDs and network access off, and a document that declares a DOCTYPE is
refused outright (reliability-notes.md §5.5): Intacct responses never carry one, so a DOCTYPE can only be an
attack (billion laughs, external entities) or a broken intermediary. The response skeleton is the one of
sage-intacct-wire.md §1.4: ``control`` (status), then either a top-level ``errormessage`` (control failure)
or ``operation`` with ``authentication`` and either an operation-level ``errormessage`` (authentication
failure) or one ``result`` per function.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from connectors.errors import UpstreamError, UpstreamInfo

PROVIDER = "sage_intacct"

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""Above this a response is refused before parsing (a page of 2000 records is a few MB)."""


def hardened_parser(
    *, remove_blank_text: bool = True, strip_comments_and_pis: bool = False
) -> etree.XMLParser:
    """The only XML parser the gateway uses (reliability-notes.md §5.5): no entities, no DTD, no network, no
    huge trees. ``strip_comments_and_pis`` for XML that is passed on (the proxy's function bodies)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=remove_blank_text,
        remove_comments=strip_comments_and_pis,
        remove_pis=strip_comments_and_pis,
    )


def _refuse(message: str) -> UpstreamError:
    return UpstreamError(message, upstream=UpstreamInfo(PROVIDER))


def parse_xml(body: bytes) -> etree._Element:
    """Parse ``body`` with the hardened parser; refuse DTDs, entities and malformed documents."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise _refuse("Sage Intacct returned an oversized XML document")
    # Cheap pre-check: no legitimate Intacct document declares a DTD or entities (§1.4), and refusing
    # before parsing keeps entity bombs away from libxml2 altogether.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise _refuse("Sage Intacct returned an XML document with a DOCTYPE; it was refused")
    try:
        root = etree.fromstring(body, hardened_parser())
    except etree.XMLSyntaxError:
        raise _refuse("Sage Intacct returned malformed XML") from None
    docinfo = root.getroottree().docinfo
    # The byte scan above misses other encodings (UTF-16): ask the parsed tree as well. (lxml-stubs
    # lacks DocInfo.doctype, hence getattr.)
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None:
        raise _refuse("Sage Intacct returned an XML document with a DOCTYPE; it was refused")
    return root


# --- typed response -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class XmlError:
    """One ``<error>`` (sage-intacct-wire.md §1.5): any part may be empty; ``errorno`` is not always a code."""

    errorno: str
    description: str = ""
    description2: str = ""
    correction: str = ""

    @property
    def message(self) -> str:
        return " ".join(part for part in (self.description, self.description2) if part).strip()

    @property
    def text(self) -> str:
        """Everything the upstream said, for classification."""
        return " ".join(p for p in (self.errorno, self.description, self.description2, self.correction) if p)


@dataclass(frozen=True)
class AuthBlock:
    """``operation/authentication``. ``sessiontimeout`` is optional (absent in v2.1 and older recordings)."""

    status: str
    userid: str | None = None
    companyid: str | None = None
    locationid: str | None = None
    sessiontimestamp: dt.datetime | None = None
    sessiontimeout: dt.datetime | None = None


Record = dict[str, Any]
"""One record: field name → text, nested blocks as dicts, repeated children as lists."""


@dataclass(frozen=True)
class ResultData:
    """A result's ``<data>``: paging attributes (§1.4 table) and the records it holds."""

    listtype: str | None = None
    count: int | None = None
    totalcount: int | None = None
    numremaining: int | None = None
    offset: int | None = None
    result_id: str | None = None
    records: tuple[Record, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class FunctionResult:
    """One ``<result>``: ``status`` is ``success``, ``failure`` or ``aborted``."""

    status: str
    function: str
    controlid: str
    data: ResultData | None = None
    key: str | None = None
    errors: tuple[XmlError, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def records(self) -> tuple[Record, ...]:
        return self.data.records if self.data is not None else ()


@dataclass(frozen=True)
class XmlResponse:
    """A parsed gateway response. ``errors`` of a level are only set when that level failed."""

    control_status: str
    control_id: str | None = None
    control_errors: tuple[XmlError, ...] = ()
    auth: AuthBlock | None = None
    auth_errors: tuple[XmlError, ...] = ()
    results: tuple[FunctionResult, ...] = field(default_factory=tuple)

    @property
    def control_ok(self) -> bool:
        return self.control_status == "success"

    @property
    def auth_ok(self) -> bool:
        return self.auth is not None and self.auth.status == "success"


def _text(parent: etree._Element | None, tag: str) -> str | None:
    if parent is None:
        return None
    child = parent.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_timestamp(value: str | None) -> dt.datetime | None:
    """An ISO-8601 timestamp with offset (``2020-11-20T03:39:40+00:00``, §1.3) as an aware datetime."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _errors(errormessage: etree._Element | None) -> tuple[XmlError, ...]:
    if errormessage is None:
        return ()
    return tuple(
        XmlError(
            errorno=_text(error, "errorno") or "",
            description=_text(error, "description") or "",
            description2=_text(error, "description2") or "",
            correction=_text(error, "correction") or "",
        )
        for error in errormessage.findall("error")
    )


def element_to_record(element: etree._Element) -> Record:
    """Convert a record element to a dict; leaves become text ("" when empty)."""
    record: Record = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        value: Any = element_to_record(child) if len(child) else (child.text or "").strip()
        if child.tag in record:
            existing = record[child.tag]
            if isinstance(existing, list):
                existing.append(value)
            else:
                record[child.tag] = [existing, value]
        else:
            record[child.tag] = value
    return record


def _data(element: etree._Element | None) -> ResultData | None:
    if element is None:
        return None
    children = [child for child in element if isinstance(child.tag, str)]
    return ResultData(
        listtype=element.get("listtype"),
        count=_int(element.get("count")),
        totalcount=_int(element.get("totalcount")),
        numremaining=_int(element.get("numremaining")),
        offset=_int(element.get("offset")),
        result_id=element.get("resultId") or None,
        records=tuple(element_to_record(child) for child in children),
        tags=tuple(str(child.tag) for child in children),
    )


def parse_response(body: bytes) -> XmlResponse:
    """Parse one gateway response into :class:`XmlResponse` (raises ``UpstreamError`` when unusable)."""
    root = parse_xml(body)
    if root.tag != "response":
        raise _refuse(f"Sage Intacct returned an unexpected XML document <{root.tag}>")
    control = root.find("control")
    control_status = _text(control, "status") or "failure"
    control_id = _text(control, "controlid") or None
    operation = root.find("operation")
    if operation is None:
        # Control-level failure: top-level errormessage, no operation (§1.5).
        return XmlResponse(
            control_status=control_status if control is not None else "failure",
            control_id=control_id,
            control_errors=_errors(root.find("errormessage")),
        )
    auth_element = operation.find("authentication")
    auth = None
    if auth_element is not None:
        auth = AuthBlock(
            status=_text(auth_element, "status") or "failure",
            userid=_text(auth_element, "userid") or None,
            companyid=_text(auth_element, "companyid") or None,
            locationid=_text(auth_element, "locationid") or None,
            sessiontimestamp=parse_timestamp(_text(auth_element, "sessiontimestamp")),
            sessiontimeout=parse_timestamp(_text(auth_element, "sessiontimeout")),
        )
    results = tuple(
        FunctionResult(
            status=_text(result, "status") or "failure",
            function=_text(result, "function") or "",
            controlid=_text(result, "controlid") or "",
            data=_data(result.find("data")),
            key=_text(result, "key") or None,
            errors=_errors(result.find("errormessage")),
        )
        for result in operation.findall("result")
    )
    return XmlResponse(
        control_status=control_status,
        control_id=control_id,
        control_errors=_errors(root.find("errormessage")),
        auth=auth,
        auth_errors=_errors(operation.find("errormessage")),
        results=results,
    )


# --- request building ---------------------------------------------------------------------------------


def sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    """Append ``<tag>text</tag>`` to ``parent``."""
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = text
    return child


def element(tag: str, text: str | None = None, children: Iterable[etree._Element] = ()) -> etree._Element:
    node = etree.Element(tag)
    if text is not None:
        node.text = text
    for child in children:
        node.append(child)
    return node


def function(controlid: str, body: etree._Element) -> etree._Element:
    """``<function controlid="…">body</function>`` (§1.2: exactly one function element inside)."""
    node = etree.Element("function", controlid=controlid)
    node.append(body)
    return node


@dataclass(frozen=True)
class Login:
    """``<login>`` authentication (§1.2). ``locationid`` scopes the session to an entity."""

    userid: str
    companyid: str
    password: str
    locationid: str | None = None

    def __repr__(self) -> str:
        return f"Login(userid={self.userid!r}, companyid={self.companyid!r}, locationid={self.locationid!r})"


REDACTED = "[redacted]"


def build_request(
    *,
    sender_id: str,
    sender_password: str,
    control_id: str,
    uniqueid: bool,
    functions: Sequence[etree._Element],
    session_id: str | None = None,
    login: Login | None = None,
    transaction: bool = False,
    redact: bool = False,
) -> bytes:
    """A complete ``<request>`` (element order of the v3.0 XSD, §1.2).

    ``uniqueid`` is always sent explicitly: the docs say the default is ``true`` while the SDKs send
    ``false`` (factcheck #15), so relying on a default would make reads fail on a repeated controlid or
    writes lose their duplicate guard. ``redact=True`` replaces every secret for the request log.
    """
    request = etree.Element("request")
    control = sub(request, "control")
    sub(control, "senderid", sender_id)
    sub(control, "password", REDACTED if redact else sender_password)
    sub(control, "controlid", control_id)
    sub(control, "uniqueid", "true" if uniqueid else "false")
    sub(control, "dtdversion", "3.0")
    sub(control, "includewhitespace", "false")
    operation = sub(request, "operation")
    operation.set("transaction", "true" if transaction else "false")
    authentication = sub(operation, "authentication")
    if login is not None:
        node = sub(authentication, "login")
        sub(node, "userid", login.userid)
        sub(node, "companyid", login.companyid)
        sub(node, "password", REDACTED if redact else login.password)
        if login.locationid:
            sub(node, "locationid", login.locationid)
    elif session_id is not None:
        sub(authentication, "sessionid", REDACTED if redact else session_id)
    else:
        raise ValueError("a request needs a login or a session id")
    content = sub(operation, "content")
    for fn in functions:
        content.append(fn)
    return bytes(etree.tostring(request, xml_declaration=True, encoding="UTF-8"))


def parse_functions(fragment: bytes) -> list[etree._Element]:
    """Parse caller-supplied ``<function>`` elements (the XML proxy) with the hardened parser."""
    if b"<!DOCTYPE" in fragment or b"<!ENTITY" in fragment or b"<?xml" in fragment:
        raise ValueError("the XML proxy takes bare <function> elements")
    try:
        content = etree.fromstring(b"<content>" + fragment + b"</content>", hardened_parser())
    except etree.XMLSyntaxError:
        raise ValueError("the XML proxy body is not well-formed") from None
    functions = [child for child in content if isinstance(child.tag, str)]
    stray_text = (content.text or "").strip() or any((child.tail or "").strip() for child in content)
    if not functions or stray_text or any(child.tag != "function" for child in functions):
        raise ValueError("the XML proxy body must hold one or more <function> elements only")
    return functions
