"""Sage Intacct wire parsing: every recorded fixture, XML hardening, REST envelopes, request building."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from connectors.errors import NotFound, UpstreamError, ValidationFailed
from connectors.sage_intacct import mapping as m
from connectors.sage_intacct.rest import (
    parse_rest_collection,
    parse_rest_errors,
    parse_rest_object,
    parse_token_response,
)
from connectors.sage_intacct.session import function_error, is_duplicate_controlid
from connectors.sage_intacct.xml import (
    FunctionResult,
    Login,
    XmlError,
    XmlResponse,
    build_request,
    element,
    function,
    hardened_parser,
    parse_functions,
    parse_response,
)

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "intacct"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _invalid_session(r: XmlResponse) -> None:
    assert r.control_ok and not r.auth_ok and r.results == ()
    assert r.auth is not None and r.auth.userid is None and r.auth.companyid is None
    assert [e.errorno for e in r.auth_errors] == ["XL03000006"]
    assert r.auth_errors[0].description2.startswith("Invalid session")


def _login_failure(r: XmlResponse) -> None:
    assert r.control_ok and not r.auth_ok and r.results == ()
    assert r.auth is not None and r.auth.userid == "xml_gateway"
    assert r.auth_errors[0].message == "Sign-in information is incorrect"


def _control_failure(r: XmlResponse) -> None:
    assert not r.control_ok and r.auth is None and r.results == ()
    assert r.control_id == "1543089995"
    assert [e.errorno for e in r.control_errors] == ["XL03000003", "XL03000003"]
    assert "Opening and ending tag mismatch" in r.control_errors[0].description2


def _create_failure(r: XmlResponse) -> None:
    (result,) = r.results
    assert (result.status, result.function, result.controlid) == ("failure", "create", "testFunctionId")
    assert result.data is not None and result.data.listtype == "objects" and result.data.count == 1
    assert result.records == ({"RECORDNO": "1424", "PROJECTID": "Fellow PD2"},)
    assert [e.errorno for e in result.errors] == ["BL34000061", "BL01001973", "BL01001973"]
    assert result.errors[0].correction == "Use a unique value instead."
    assert r.auth is not None and r.auth.sessiontimestamp == utc("2018-11-24T12:23:45-08:00")
    assert r.auth.sessiontimeout is None  # optional (§1.3): older responses omit it


def _create_success(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.ok and result.function == "create"
    assert result.records == ({"RECORDNO": "760", "VENDORID": "FOOBAR"},)
    assert result.data is not None and result.data.tags == ("vendor",)
    assert r.auth is not None and r.auth.sessiontimeout == utc("2020-10-02T22:17:56+00:00")


def _legacy_key(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.ok and result.function == "create_supdoc" and result.key == "35" and result.data is None
    assert r.auth is not None and r.auth.companyid is None  # this recording has no <companyid>


def _legacy_delete(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.ok and result.function == "delete_supdoc" and result.key is None and result.data is None


def _get_api_session(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.ok and result.function == "getAPISession"
    api = result.records[0]
    assert api["sessionid"] == "4dfZhgdAZ3jR-tyznJZ_UUbCeND_3A.."
    assert api["endpoint"] == "https://api.intacct.com/ia/xml/xmlgw.phtml"
    assert r.auth is not None and r.auth.sessiontimeout is not None and r.auth.sessiontimestamp is not None
    assert r.auth.sessiontimeout - r.auth.sessiontimestamp == dt.timedelta(hours=12)


def _mixed(r: XmlResponse) -> None:
    assert [x.status for x in r.results] == ["failure", "success", "failure"]
    assert r.results[0].errors[0].errorno == "Invalid fields list x"
    assert r.results[1].data is not None and r.results[1].data.listtype == "APBILL"
    assert r.results[1].records[0]["RECORDID"] == "E18-6465"
    assert r.auth is not None and r.auth.locationid == "*****"


def _two_results(r: XmlResponse) -> None:
    first, second = r.results
    assert first.function == "readByQuery" and first.data is not None
    assert (first.data.listtype, first.data.count, first.data.totalcount, first.data.numremaining) == (
        "project",
        5,
        35,
        30,
    )
    assert first.data.result_id == "7765623336W-ne68CoA4gAAEEhD7EAAAAP4"
    assert [rec["PROJECTID"] for rec in first.records][:2] == ["A17-ADVC", "A17-CONF01"]
    assert second.function == "read" and second.data is not None and second.data.listtype == "PROJECT"
    assert second.data.totalcount is None and second.data.result_id is None
    assert second.records[0]["NAME"] == "Program Development1"


def _apbill(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.data is not None
    assert (result.data.count, result.data.totalcount, result.data.numremaining) == (1, 816, 815)
    record = result.records[0]
    assert record["TOTALDUE"] == "5900" and record["WHENMODIFIED"] == "09/16/2013 15:50:21"
    assert record["PAYTO.TAXGROUP.NAME"] == ""  # dotted related fields stay flat keys


def _readmore_1(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.data is not None and result.data.result_id == "READMOREID"
    assert (result.data.count, result.data.numremaining) == (10, 2) and len(result.records) == 10


def _readmore_2(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.function == "readMore" and result.data is not None
    assert (result.data.count, result.data.numremaining, result.data.result_id) == (2, 0, "READMOREID")
    assert [rec["PROJECTID"] for rec in result.records] == ["S11", "S12"]


def _update_success(r: XmlResponse) -> None:
    (result,) = r.results
    assert result.ok and result.function == "update"
    assert result.records == ({"RECORDNO": "381", "VENDORID": "AB10001"},)


EXPECTATIONS = {
    "xml_auth_failure_invalid_session.xml": _invalid_session,
    "xml_auth_failure_login.xml": _login_failure,
    "xml_control_failure_xml_parse_error.xml": _control_failure,
    "xml_create_failure_errormessage.xml": _create_failure,
    "xml_create_generic_success.xml": _create_success,
    "xml_create_legacy_success_key.xml": _legacy_key,
    "xml_delete_legacy_success_nodata.xml": _legacy_delete,
    "xml_getapisession_success.xml": _get_api_session,
    "xml_mixed_results_function_failure.xml": _mixed,
    "xml_readbyquery_and_read_two_results.xml": _two_results,
    "xml_readbyquery_apbill_with_resultid.xml": _apbill,
    "xml_readmore_pair_page1_readbyquery.xml": _readmore_1,
    "xml_readmore_pair_page2_readmore.xml": _readmore_2,
    "xml_update_generic_success.xml": _update_success,
}


def test_every_xml_fixture_has_an_expectation() -> None:
    assert {p.name for p in FIXTURES.glob("*.xml")} == set(EXPECTATIONS)


@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_xml_fixture_parses(name: str) -> None:
    EXPECTATIONS[name](parse_response(load(name)))


def test_function_failures_are_classified() -> None:
    create = parse_response(load("xml_create_failure_errormessage.xml")).results[0]
    error = function_error(create, status=200, request_id="ctl-1", what="the project")
    assert isinstance(error, ValidationFailed)
    assert error.upstream is not None and error.upstream.provider == "sage_intacct"
    assert error.upstream.request_id == "ctl-1"
    assert error.upstream.errors[0].code == "BL34000061"
    assert "Another Project" in error.upstream.errors[0].message
    mixed = parse_response(load("xml_mixed_results_function_failure.xml")).results[0]
    assert type(function_error(mixed, status=200, request_id=None, what="x")) is UpstreamError
    missing = FunctionResult(
        "failure", "delete", "c", errors=(XmlError("BL01001973", "", "Cannot find customer with key '9'"),)
    )
    assert isinstance(function_error(missing, status=200, request_id=None, what="x"), NotFound)


@pytest.mark.parametrize(
    ("errorno", "text", "expected"),
    [
        ("XL03000004", "A successful transaction has already been recorded with the control ID 'x'.", True),
        ("XL99", "The control ID 'abc' has already been used for this company.", True),
        ("BL34000061", "Another Customer with the given value(s) C1 already exists", False),
    ],
)
def test_duplicate_controlid_detection(errorno: str, text: str, expected: bool) -> None:
    result = FunctionResult("failure", "create", "abc", errors=(XmlError(errorno, "", text),))
    assert is_duplicate_controlid(result) is expected


# --- hardening ------------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE response [
  <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
]>
<response><control><status>&d;</status></control></response>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE response [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<response><control><status>success</status><senderid>&x;</senderid></control></response>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "xxe"])
def test_dtd_and_entities_are_refused(body: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_response(body)
    assert "DOCTYPE" in caught.value.detail
    assert "root:" not in str(caught.value)


def test_doctype_is_refused_in_any_encoding() -> None:
    # UTF-16 hides the DOCTYPE from a byte scan: the parsed document's docinfo still catches it.
    body = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE response><response/>'.encode("utf-16")
    with pytest.raises(UpstreamError, match="DOCTYPE"):
        parse_response(body)


def test_hardened_parser_never_fetches_an_external_dtd() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    connected: list[bool] = []

    def accept() -> None:
        try:
            listener.accept()
            connected.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    body = (
        f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:{port}/x.dtd">'
        "<!-- no entity --><r>&ext;</r>"
    ).encode()
    try:
        etree.fromstring(body, hardened_parser())
    except etree.XMLSyntaxError:
        pass  # the undefined entity is an error, never a fetch
    thread.join()
    listener.close()
    assert connected == []
    with pytest.raises(UpstreamError):
        parse_response(body)


@pytest.mark.parametrize("body", [b"<response><control>", b"<html><body>502</body></html>", b""])
def test_malformed_or_foreign_documents_are_upstream_errors(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        parse_response(body)


def test_proxy_fragment_parsing() -> None:
    functions = parse_functions(
        b'<function controlid="a"><read/></function><function controlid="b"><query/></function>'
    )
    assert [f.get("controlid") for f in functions] == ["a", "b"]
    for bad in (
        b"<authentication><sessionid>x</sessionid></authentication>",
        b'<?xml version="1.0"?><function controlid="a"/>',
        b'<!DOCTYPE x><function controlid="a"/>',
        b'<function controlid="a">',
        b'text<function controlid="a"/>',
        b"",
    ):
        with pytest.raises(ValueError):
            parse_functions(bad)


def test_request_envelope_order_and_redaction() -> None:
    fn = function("fn-1", element("getAPISession"))
    common: dict[str, Any] = {
        "sender_id": "sender",
        "sender_password": "sender-secret",
        "control_id": "ctl",
        "uniqueid": True,
        "functions": [fn],
    }
    body = build_request(login=Login("user", "CO", "user-secret", "US1"), **common)
    root = etree.fromstring(body)
    assert [c.tag for c in root.find("control")] == [  # type: ignore[union-attr]
        "senderid",
        "password",
        "controlid",
        "uniqueid",
        "dtdversion",
        "includewhitespace",
    ]
    assert root.findtext("control/uniqueid") == "true"
    assert [c.tag for c in root.find("operation/authentication/login")] == [  # type: ignore[union-attr]
        "userid",
        "companyid",
        "password",
        "locationid",
    ]
    redacted = build_request(session_id="session-secret", redact=True, **common)
    assert b"secret" not in redacted and b"<senderid>sender</senderid>" in redacted
    assert "user-secret" not in repr(Login("user", "CO", "user-secret"))


# --- REST envelopes -------------------------------------------------------------------------------------


def rest_fixture(name: str) -> Any:
    return json.loads(load(name))


def test_rest_error_fixture() -> None:
    (error,) = parse_rest_errors(rest_fixture("rest_error_400_invalid_request.json"))
    assert error.code == "REST-1028" and error.message == "A POST request requires a payload"
    assert error.support_id == "Kxi78%7EZuyXBDEGVHD2UmO1phYXDQAAAAo"


def test_rest_error_variants() -> None:
    bare = {"error": {"code": "GW-0034", "message": "Invalid token", "supportId": "s"}}
    assert [e.code for e in parse_rest_errors(bare)] == ["GW-0034"]
    top = {
        "ia::error": {
            "code": "invalidRequest",
            "message": "m",
            "details": [{"errorId": "REST-1043", "message": "/x is not a valid field", "target": "/x"}],
        }
    }
    assert [(e.code, e.target) for e in parse_rest_errors(top)] == [
        ("invalidRequest", None),
        ("REST-1043", "/x"),
    ]
    assert parse_rest_errors(rest_fixture("rest_list_customers.json")) == []


def test_rest_collection_fixtures() -> None:
    customers = parse_rest_collection(rest_fixture("rest_list_customers.json"))
    assert [r["id"] for r in customers.records] == ["CUST-100", "CUST-200", "CUST-300"]
    assert (customers.total_count, customers.start, customers.page_size, customers.next) == (3, 1, 100, None)
    vendors = parse_rest_collection(rest_fixture("rest_query_response_vendor.json"))
    assert [r["name"] for r in vendors.records] == ["Test vendor", "Design Works"]
    assert vendors.next is None and vendors.previous is None


def test_rest_object_fixture() -> None:
    reference = parse_rest_object(rest_fixture("rest_update_reference_200.json"))
    assert reference == {"key": "806", "id": "806", "href": "/objects/accounts-payable/invoice-line/806"}
    with pytest.raises(UpstreamError):
        parse_rest_object(rest_fixture("rest_list_customers.json"))


def test_rest_query_request_matches_the_documented_shape() -> None:
    documented = rest_fixture("rest_query_request_vendor.json")
    ours = m.rest_customer_query([{"$eq": {"id": "C-1"}}], start=1, size=10, case_insensitive=True)
    # Same keys and value shapes as Sage's example, plus the paging keys of §3.4.
    assert set(ours) - {"start", "size"} <= set(documented)
    for key in set(ours) & set(documented):
        assert type(ours[key]) is type(documented[key])
    assert all(isinstance(name, str) for name in ours["fields"])
    with pytest.raises(UpstreamError):
        parse_rest_collection(documented)  # a request is not an envelope


def test_token_response_keeps_secrets_out_of_repr() -> None:
    token = parse_token_response(
        {
            "token_type": "Bearer",
            "access_token": "jwt-secret",
            "refresh_token": "rt-secret",
            "expires_in": 3600,
        }
    )
    assert (token.access_token, token.refresh_token, token.expires_in) == ("jwt-secret", "rt-secret", 3600)
    assert "secret" not in repr(token)
    with pytest.raises(UpstreamError):
        parse_token_response({"error": "invalid_grant"})
