"""Sage Intacct simulator: XML gateway, REST API, faults — against the documented wire format.

Shapes are compared with the recorded responses in ``shared/fixtures/intacct`` (same XPath
expectations on both); behaviour follows ``shared/docs/sage-intacct-wire.md``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from lxml import etree

from sandbox.faults import Fault
from sandbox.sage_intacct import SageIntacctSimulator, SimConfig, SimulatedConnectionDrop

FIXTURES = Path("/work/shared/fixtures/intacct")
XML = "/ia/xml/xmlgw.phtml"
API = "/ia/api/v1"
LOGIN = "<login><userid>demo-user</userid><companyid>DEMO-CO</companyid><password>demo-password</password></login>"
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def envelope(
    *functions: tuple[str, str],
    auth: str = LOGIN,
    uniqueid: str | None = "false",
    transaction: bool = False,
    sender: tuple[str, str] = ("sandbox-sender", "sandbox-sender-password"),
) -> str:
    unique = f"<uniqueid>{uniqueid}</uniqueid>" if uniqueid is not None else ""
    body = "".join(f'<function controlid="{cid}">{xml}</function>' for cid, xml in functions)
    tx = ' transaction="true"' if transaction else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><request><control>'
        f"<senderid>{sender[0]}</senderid><password>{sender[1]}</password><controlid>ctl-1</controlid>"
        f"{unique}<dtdversion>3.0</dtdversion></control>"
        f"<operation{tx}><authentication>{auth}</authentication><content>{body}</content></operation></request>"
    )


def session_auth(session_id: str) -> str:
    return f"<sessionid>{session_id}</sessionid>"


async def post_xml(client: httpx.AsyncClient, document: str) -> etree._Element:
    response = await client.post(XML, content=document, headers={"content-type": "application/xml"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == 'text/xml; encoding="UTF-8"'
    return etree.fromstring(response.content, PARSER)


def fixture(name: str) -> etree._Element:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"recorded fixture {name} not available")
    return etree.fromstring(path.read_bytes(), PARSER)


def child_tags(element: etree._Element | None) -> list[str]:
    assert element is not None
    return [str(c.tag) for c in element if isinstance(c.tag, str)]


def results(root: etree._Element) -> list[etree._Element]:
    return root.findall("operation/result")


def attrs(element: etree._Element | None) -> dict[str, str]:
    assert element is not None
    return {str(k): str(v) for k, v in element.items()}


def errnos(element: etree._Element) -> list[str]:
    return [e.findtext("errorno") or "" for e in element.findall("errormessage/error")]


def customer_xml(customer_id: str, name: str) -> str:
    return (
        f"<create><CUSTOMER><CUSTOMERID>{customer_id}</CUSTOMERID><NAME>{name}</NAME>"
        f"<DISPLAYCONTACT><PRINTAS>{name}</PRINTAS><EMAIL1>x@example.com</EMAIL1></DISPLAYCONTACT>"
        "</CUSTOMER></create>"
    )


def glbatch_xml(lines: list[tuple[str, str, str, str]], reference: str = "REF-1") -> str:
    entries = "".join(
        f"<GLENTRY><ACCOUNTNO>{acct}</ACCOUNTNO><TR_TYPE>{tr}</TR_TYPE><TRX_AMOUNT>{amount}</TRX_AMOUNT>"
        + (f"<LOCATION>{loc}</LOCATION>" if loc else "")
        + "</GLENTRY>"
        for acct, tr, amount, loc in lines
    )
    return (
        "<create><GLBATCH><JOURNAL>GJ</JOURNAL><BATCH_DATE>03/31/2024</BATCH_DATE>"
        f"<BATCH_TITLE>Accrual</BATCH_TITLE><REFERENCENO>{reference}</REFERENCENO>"
        f"<ENTRIES>{entries}</ENTRIES></GLBATCH></create>"
    )


BALANCED = [("6000", "1", "100.25", ""), ("2000", "-1", "100.25", "")]

INVOICE_XML = (
    "<create_invoice><customerid>C-0002</customerid>"
    "<datecreated><year>2024</year><month>06</month><day>30</day></datecreated>"
    "<termname>N30</termname><invoiceno>INV-900</invoiceno>"
    "<invoiceitems>"
    "<lineitem><glaccountno>4000</glaccountno><amount>76343.434</amount><memo>first</memo></lineitem>"
    "<lineitem><glaccountno>4000</glaccountno><amount>10</amount><departmentid>SALES</departmentid></lineitem>"
    "</invoiceitems></create_invoice>"
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> SageIntacctSimulator:
    return SageIntacctSimulator(SimConfig(clock=clock))


@pytest.fixture
async def client(sim: SageIntacctSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as c:
        yield c


# ---------------------------------------------------------------------------------------------- control


async def test_wrong_sender_is_a_control_failure(client: httpx.AsyncClient) -> None:
    root = await post_xml(client, envelope(("f1", "<getAPISession/>"), sender=("sandbox-sender", "nope")))
    recorded = fixture("xml_control_failure_xml_parse_error.xml")
    for doc in (root, recorded):
        assert doc.findtext("control/status") == "failure"
        assert child_tags(doc.find("control")) == [
            "status",
            "senderid",
            "controlid",
            "uniqueid",
            "dtdversion",
        ]
        assert child_tags(doc.find("errormessage/error")) == [
            "errorno",
            "description",
            "description2",
            "correction",
        ]
        assert doc.find("operation") is None
    assert root.findtext("errormessage/error/errorno") == "XL03000006"
    assert root.findtext("errormessage/error/description2") == "Incorrect Intacct XML Partner ID or password."
    assert root.findtext("control/controlid") == "ctl-1"


async def test_malformed_xml_is_refused_like_the_recorded_parse_error(client: httpx.AsyncClient) -> None:
    broken = envelope(("f1", "<getAPISession/>")).replace("</content>", "</contents>")
    root = await post_xml(client, broken)
    assert root.findtext("control/status") == "failure"
    assert root.findtext("control/controlid") == "ctl-1"
    description = root.findtext("errormessage/error/description2") or ""
    assert root.findtext("errormessage/error/errorno") == "XL03000003"
    assert description.startswith("XML Parse schema error: Fatal Error 76: Opening and ending tag mismatch")
    assert root.find("operation") is None


@pytest.mark.parametrize(
    ("prolog", "reference"),
    [
        ('<!DOCTYPE request [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"),
        ('<!DOCTYPE request [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>', "&b;"),
    ],
)
async def test_doctype_and_entities_are_refused(
    client: httpx.AsyncClient, sim: SageIntacctSimulator, prolog: str, reference: str
) -> None:
    customer = customer_xml("C-XXE", f"Mallory {reference}")
    document = envelope(("f1", customer)).replace("?><request>", f"?>{prolog}<request>")
    root = await post_xml(client, document)
    assert root.findtext("control/status") == "failure"
    assert root.findtext("errormessage/error/errorno") == "XL03000003"
    assert "DOCTYPE" in (root.findtext("errormessage/error/description2") or "")
    assert not [c for c in sim.records("DEMO-CO", "CUSTOMER") if c["CUSTOMERID"] == "C-XXE"]


async def test_get_is_not_accepted(client: httpx.AsyncClient) -> None:
    response = await client.get(XML)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# ---------------------------------------------------------------------------------------------- auth


async def test_bad_login_matches_the_recorded_auth_failure(client: httpx.AsyncClient) -> None:
    auth = LOGIN.replace("demo-password", "wrong")
    root = await post_xml(client, envelope(("f1", "<getAPISession/>"), auth=auth))
    recorded = fixture("xml_auth_failure_login.xml")
    for doc in (root, recorded):
        assert doc.findtext("control/status") == "success"
        assert child_tags(doc.find("operation")) == ["authentication", "errormessage"]
        assert child_tags(doc.find("operation/authentication")) == ["status", "userid", "companyid"]
        assert doc.findtext("operation/authentication/status") == "failure"
        assert doc.findtext("operation/errormessage/error/errorno") == "XL03000006"
    assert root.findtext("operation/errormessage/error/description2") == "Sign-in information is incorrect"
    assert root.findtext("operation/authentication/userid") == "demo-user"


async def test_get_api_session_then_session_auth(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    root = await post_xml(client, envelope(("s1", "<getAPISession/>")))
    recorded = fixture("xml_getapisession_success.xml")
    for doc in (root, recorded):
        assert child_tags(doc.find("operation/authentication")) == [
            "status",
            "userid",
            "companyid",
            "locationid",
            "sessiontimestamp",
            "sessiontimeout",
        ]
        assert child_tags(doc.find("operation/result")) == ["status", "function", "controlid", "data"]
        assert child_tags(doc.find("operation/result/data/api")) == ["sessionid", "endpoint", "locationid"]
        assert doc.findtext("operation/result/function") == "getAPISession"
    assert root.findtext("operation/result/controlid") == "s1"
    api = root.find("operation/result/data/api")
    assert api is not None
    assert api.findtext("endpoint") == "http://127.0.0.1:9002/ia/xml/xmlgw.phtml"
    session_id = api.findtext("sessionid") or ""
    root = await post_xml(
        client,
        envelope(
            ("r1", "<read><object>GLACCOUNT</object><keys>1</keys></read>"), auth=session_auth(session_id)
        ),
    )
    assert root.findtext("operation/authentication/status") == "success"
    assert root.findtext("operation/authentication/companyid") == "DEMO-CO"
    assert root.findtext("operation/result/data/GLACCOUNT/ACCOUNTNO") == "1000"
    patched = await client.patch("/_sim/config", json={"public_url": "http://sim.example:8080"})
    assert patched.status_code == 200
    root = await post_xml(client, envelope(("s2", "<getAPISession/>"), auth=session_auth(session_id)))
    assert root.findtext("operation/result/data/api/endpoint") == "http://sim.example:8080/ia/xml/xmlgw.phtml"
    assert root.findtext("operation/result/data/api/sessionid") == session_id


async def test_entity_login_scopes_the_session(client: httpx.AsyncClient) -> None:
    pipe_login = LOGIN.replace("DEMO-CO", "DEMO-ME|UK1")
    query = (
        "q",
        "<readByQuery><object>ARINVOICE</object><query></query><fields>MEGAENTITYID</fields></readByQuery>",
    )
    root = await post_xml(client, envelope(query, auth=pipe_login))
    assert root.findtext("operation/authentication/locationid") == "UK1"
    assert root.findtext("operation/authentication/companyid") == "DEMO-ME"
    entities = {e.text for e in root.iterfind("operation/result/data/arinvoice/MEGAENTITYID")}
    assert entities == {"UK1"}
    element_login = LOGIN.replace("DEMO-CO", "DEMO-ME").replace(
        "</login>", "<locationid>US1</locationid></login>"
    )
    root = await post_xml(client, envelope(("s", "<getAPISession/>"), auth=element_login))
    assert root.findtext("operation/result/data/api/locationid") == "US1"
    top = await post_xml(client, envelope(query, auth=LOGIN.replace("DEMO-CO", "DEMO-ME")))
    assert {e.text for e in top.iterfind("operation/result/data/arinvoice/MEGAENTITYID")} == {"US1", "UK1"}
    bad = await post_xml(client, envelope(query, auth=LOGIN.replace("DEMO-CO", "DEMO-ME|FR9")))
    assert bad.findtext("operation/authentication/status") == "failure"


async def test_session_timeout_slides_and_expires(
    client: httpx.AsyncClient, sim: SageIntacctSimulator, clock: Clock
) -> None:
    sim.update_config(session_ttl=100)
    root = await post_xml(client, envelope(("s", "<getAPISession/>")))
    session_id = root.findtext("operation/result/data/api/sessionid") or ""
    ping = ("p", "<read><object>GLACCOUNT</object><keys>1</keys></read>")
    for _ in range(3):
        clock.now += 60  # each call lands before the projected timeout and pushes it out again
        root = await post_xml(client, envelope(ping, auth=session_auth(session_id)))
        assert root.findtext("operation/authentication/status") == "success"
        timeout = root.findtext("operation/authentication/sessiontimeout") or ""
        stamp = root.findtext("operation/authentication/sessiontimestamp") or ""
        assert timeout > stamp and timeout.endswith("+00:00")
    clock.now += 101
    root = await post_xml(client, envelope(ping, auth=session_auth(session_id)))
    recorded = fixture("xml_auth_failure_invalid_session.xml")
    for doc in (root, recorded):
        assert doc.findtext("operation/authentication/status") == "failure"
        assert doc.findtext("operation/authentication/userid") == ""
        assert doc.findtext("operation/authentication/companyid") == ""
        assert doc.findtext("operation/errormessage/error/errorno") == "XL03000006"
        assert (doc.findtext("operation/errormessage/error/description2") or "").startswith("Invalid session")
        assert doc.find("operation/result") is None


async def test_expire_sessions_control_route(client: httpx.AsyncClient) -> None:
    root = await post_xml(client, envelope(("s", "<getAPISession/>")))
    session_id = root.findtext("operation/result/data/api/sessionid") or ""
    assert (await client.post("/_sim/expire-sessions")).json() == {"expired": 1}
    root = await post_xml(client, envelope(("p", "<getAPISession/>"), auth=session_auth(session_id)))
    assert (root.findtext("operation/errormessage/error/description2") or "").startswith("Invalid session")


# ---------------------------------------------------------------------------------------------- functions


async def test_results_in_request_order_with_mixed_outcomes(client: httpx.AsyncClient) -> None:
    root = await post_xml(
        client,
        envelope(
            ("first", "<read><object>CUSTOMER</object><keys>10</keys><fields>x</fields></read>"),
            (
                "second",
                "<read><object>CUSTOMER</object><keys>10</keys><fields>CUSTOMERID,NAME</fields></read>",
            ),
            ("third", "<readByQuery><object>BADOBJECT</object><query></query></readByQuery>"),
        ),
    )
    recorded = fixture("xml_mixed_results_function_failure.xml")
    assert [r.findtext("status") for r in results(root)] == [r.findtext("status") for r in results(recorded)]
    assert [r.findtext("controlid") for r in results(root)] == ["first", "second", "third"]
    assert [r.findtext("function") for r in results(root)] == ["read", "read", "readByQuery"]
    assert errnos(results(root)[0]) == ["Invalid fields list x"] == errnos(results(recorded)[0])
    assert child_tags(results(root)[1]) == child_tags(results(recorded)[1])
    assert results(root)[1].findtext("data/CUSTOMER/NAME") == "Acme Corporation"
    assert child_tags(results(root)[1].find("data/CUSTOMER")) == ["CUSTOMERID", "NAME"]
    assert errnos(results(root)[2]) == ["Query Failed"]


async def test_uniqueid_default_refuses_a_repeated_controlid(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    document = envelope(("create-cust-42", customer_xml("C-0042", "Once Only")), uniqueid=None)
    first = await post_xml(client, document)
    second = await post_xml(client, document)
    assert first.findtext("operation/result/status") == "success"
    assert second.findtext("operation/result/status") == "failure"
    assert second.findtext("control/uniqueid") == "true"
    assert "create-cust-42" in (second.findtext("operation/result/errormessage/error/description2") or "")
    assert len([c for c in sim.records("DEMO-CO", "CUSTOMER") if c["CUSTOMERID"] == "C-0042"]) == 1
    read = ("same-id", "<read><object>GLACCOUNT</object><keys>1</keys></read>")
    for _ in range(2):
        root = await post_xml(client, envelope(read, uniqueid="false"))
        assert root.findtext("operation/result/status") == "success"


async def test_transaction_rolls_back_and_aborts_every_function(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    unbalanced = [("6000", "1", "100", ""), ("2000", "-1", "99", "")]
    root = await post_xml(
        client,
        envelope(
            ("t1", customer_xml("C-TX1", "Rolled Back")),
            ("t2", glbatch_xml(unbalanced)),
            ("t3", "<read><object>GLACCOUNT</object><keys>1</keys></read>"),
            transaction=True,
        ),
    )
    assert [r.findtext("status") for r in results(root)] == ["aborted", "aborted", "aborted"]
    assert errnos(results(root)[0]) == ["XL03000009"]
    assert errnos(results(root)[1])[-1] == "XL03000009" and len(errnos(results(root)[1])) >= 2
    assert errnos(results(root)[2]) == ["XL03000009"]
    assert results(root)[0].find("data") is None
    assert not [c for c in sim.records("DEMO-CO", "CUSTOMER") if c["CUSTOMERID"] == "C-TX1"]
    assert sim.records("DEMO-CO", "GLBATCH") == []


async def test_readbyquery_and_readmore_return_every_record_once(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    sim.seed_arinvoices("DEMO-CO", 247, lines_per_invoice=2)
    expected = {r["RECORDNO"] for r in sim.records("DEMO-CO", "ARINVOICE")}
    first = (
        "p1",
        "<readByQuery><object>ARINVOICE</object><fields>RECORDNO,RECORDID</fields><query></query><pagesize>100</pagesize></readByQuery>",
    )
    root = await post_xml(client, envelope(first))
    recorded = fixture("xml_readmore_pair_page1_readbyquery.xml")
    data = root.find("operation/result/data")
    recorded_data = recorded.find("operation/result/data")
    assert data is not None and recorded_data is not None
    assert list(data.attrib) == list(recorded_data.attrib)
    assert data.get("listtype") == "arinvoice" and child_tags(data)[0] == "arinvoice"
    seen = [e.findtext("RECORDNO") for e in data]
    total = int(data.get("totalcount") or 0)
    assert total == len(expected) == 250
    assert data.get("numremaining") == str(total - 100)
    result_id = data.get("resultId") or ""
    while int(data.get("numremaining") or 0):
        before = int(data.get("numremaining") or 0)
        root = await post_xml(
            client, envelope(("more", f"<readMore><resultId>{result_id}</resultId></readMore>"))
        )
        assert root.findtext("operation/result/function") == "readMore"
        data = root.find("operation/result/data")
        assert data is not None
        assert data.get("resultId") == result_id and data.get("totalcount") == str(total)
        assert int(data.get("numremaining") or 0) == before - int(data.get("count") or 0)
        seen += [e.findtext("RECORDNO") for e in data]
    recorded_last = fixture("xml_readmore_pair_page2_readmore.xml").find("operation/result/data")
    assert recorded_last is not None and recorded_last.get("numremaining") == "0"
    assert len(seen) == len(set(seen)) and set(seen) == expected
    again = await post_xml(
        client, envelope(("gone", f"<readMore><resultId>{result_id}</resultId></readMore>"))
    )
    assert again.findtext("operation/result/status") == "failure"
    empty = await post_xml(
        client,
        envelope(
            (
                "none",
                "<readByQuery><object>DEPARTMENT</object><query>DEPARTMENTID = 'NOPE'</query></readByQuery>",
            )
        ),
    )
    assert attrs(empty.find("operation/result/data")) == {
        "listtype": "department",
        "count": "0",
        "totalcount": "0",
        "numremaining": "0",
        "resultId": "",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("CUSTOMERID = 'C-0002'", {"C-0002"}),
        ("CUSTOMERID IN ('C-0001','C-0003')", {"C-0001", "C-0003"}),
        ("NAME = 'Globex Ltd' OR CUSTOMERID = 'C-0001'", {"C-0001", "C-0002"}),
        ("RECORDNO > 10 AND RECORDNO <= 12", {"C-0002", "C-0003"}),
        ("RECORDNO >= 11 AND RECORDNO < 12", {"C-0002"}),
        ("STATUS = 'T' AND NOT CUSTOMERID = 'C-0002'", {"C-0001", "C-0003"}),
        ("STATUS = 'active'", set()),
        ("NAME LIKE '%Corp%'", {"C-0001"}),
        ("DISPLAYCONTACT.EMAIL1 = 'billing@globex.example'", {"C-0002"}),
        ("NAME = 'Jane\\'s Deli'", set()),
    ],
)
async def test_readbyquery_query_language(client: httpx.AsyncClient, query: str, expected: set[str]) -> None:
    call = f"<readByQuery><object>CUSTOMER</object><query>{query.replace('<', '&lt;')}</query></readByQuery>"
    root = await post_xml(client, envelope(("q", call)))
    assert root.findtext("operation/result/status") == "success", etree.tostring(root)
    assert {e.text for e in root.iterfind("operation/result/data/customer/CUSTOMERID")} == expected


async def test_readbyquery_whenmodified_and_limits(client: httpx.AsyncClient, clock: Clock) -> None:
    clock.now += 3600
    await post_xml(client, envelope(("c", customer_xml("C-LATE", "Later Ltd"))))
    since = "11/14/2023 23:13:20"  # one second after the seed clock (1_700_000_000 = 11/14/2023 22:13:20 UTC)
    call = f"<readByQuery><object>CUSTOMER</object><query>WHENMODIFIED &gt;= '{since}'</query></readByQuery>"
    root = await post_xml(client, envelope(("q", call)))
    assert [e.text for e in root.iterfind("operation/result/data/customer/CUSTOMERID")] == ["C-LATE"]
    for bad in (
        "<pagesize>1001</pagesize><query></query>",
        "<query>NAME = </query>",
        "<query>NOSUCH = 'x'</query>",
    ):
        root = await post_xml(
            client, envelope(("q", f"<readByQuery><object>CUSTOMER</object>{bad}</readByQuery>"))
        )
        assert root.findtext("operation/result/status") == "failure"


async def test_query_function_filter_orderby_offset(client: httpx.AsyncClient) -> None:
    call = (
        "<query><select><field>RECORDNO</field><field>ACCOUNTNO</field><field>ACCOUNTTYPE</field></select>"
        "<object>GLACCOUNT</object><filter><and>"
        "<greaterthanorequalto><field>ACCOUNTNO</field><value>2000</value></greaterthanorequalto>"
        "<or><equalto><field>ACCOUNTTYPE</field><value>incomestatement</value></equalto>"
        "<in><field>ACCOUNTNO</field><value>2000</value><value>2200</value></in></or>"
        "</and></filter><orderby><order><field>ACCOUNTNO</field><descending/></order></orderby>"
        "<pagesize>2</pagesize><offset>1</offset></query>"
    )
    root = await post_xml(client, envelope(("q", call)))
    data = root.find("operation/result/data")
    assert data is not None
    assert list(data.attrib) == ["listtype", "totalcount", "offset", "count", "numremaining"]
    assert attrs(data) == {
        "listtype": "GLACCOUNT",
        "totalcount": "6",
        "offset": "1",
        "count": "2",
        "numremaining": "3",
    }
    assert [e.findtext("ACCOUNTNO") for e in data] == ["6000", "5000"]
    assert child_tags(data[0]) == ["RECORDNO", "ACCOUNTNO", "ACCOUNTTYPE"]
    assert data[0].findtext("ACCOUNTTYPE") == "incomestatement"
    too_big = call.replace("<pagesize>2</pagesize>", "<pagesize>2001</pagesize>")
    root = await post_xml(client, envelope(("q", too_big)))
    assert root.findtext("operation/result/status") == "failure"


async def test_read_matches_the_recorded_read_shape(client: httpx.AsyncClient) -> None:
    root = await post_xml(
        client,
        envelope(("r", "<read><object>CUSTOMER</object><keys>10,12,999</keys><fields>*</fields></read>")),
    )
    recorded = fixture("xml_readbyquery_and_read_two_results.xml")
    mine, theirs = root.find("operation/result/data"), results(recorded)[1].find("data")
    assert mine is not None and theirs is not None
    assert list(mine.attrib) == list(theirs.attrib) == ["listtype", "count"]
    assert mine.get("listtype") == "CUSTOMER" and mine.get("count") == "2"
    assert [e.findtext("CUSTOMERID") for e in mine.iterfind("CUSTOMER")] == ["C-0001", "C-0003"]
    assert mine.find("CUSTOMER/DISPLAYCONTACT/MAILADDRESS") is not None
    taxes = await post_xml(
        client,
        envelope(
            ("t", "<read><object>TAXDETAIL</object><keys>UK Sale Goods Standard Rate</keys></read>"),
            auth=LOGIN.replace("DEMO-CO", "DEMO-ME"),
        ),
    )
    assert taxes.findtext("operation/result/data/TAXDETAIL/VALUE") == "20"
    sales = await post_xml(
        client,
        envelope(
            ("t", "<readByQuery><object>TAXDETAIL</object><query>TAXTYPE = 'S'</query></readByQuery>"),
            auth=LOGIN.replace("DEMO-CO", "DEMO-ME"),
        ),
    )
    assert attrs(sales.find("operation/result/data"))["count"] == "2"


async def test_create_update_delete_customer_and_vendor(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    root = await post_xml(client, envelope(("c", customer_xml("C-0100", "New Customer"))))
    recorded = fixture("xml_create_generic_success.xml")
    for doc in (root, recorded):
        data = doc.find("operation/result/data")
        assert data is not None and attrs(data) == {"listtype": "objects", "count": "1"}
        assert child_tags(data[0]) == ["RECORDNO", child_tags(data[0])[1]]
    assert root.findtext("operation/result/data/customer/CUSTOMERID") == "C-0100"
    recordno = root.findtext("operation/result/data/customer/RECORDNO") or ""
    duplicate = await post_xml(client, envelope(("d", customer_xml("C-0100", "Again"))))
    failed = fixture("xml_create_failure_errormessage.xml")
    assert errnos(results(duplicate)[0])[:2] == ["BL34000061", "BL01001973"] == errnos(results(failed)[0])[:2]
    assert attrs(duplicate.find("operation/result/data"))["count"] == "0"
    update = "<update><CUSTOMER><CUSTOMERID>C-0100</CUSTOMERID><NAME>Renamed</NAME><CREDITLIMIT>1234.50</CREDITLIMIT></CUSTOMER></update>"
    root = await post_xml(client, envelope(("u", update)))
    assert child_tags(results(root)[0]) == child_tags(results(fixture("xml_update_generic_success.xml"))[0])
    stored = next(c for c in sim.records("DEMO-CO", "CUSTOMER") if c["CUSTOMERID"] == "C-0100")
    assert stored["NAME"] == "Renamed" and stored["CREDITLIMIT"] == "1234.5"
    root = await post_xml(
        client, envelope(("x", f"<delete><object>CUSTOMER</object><keys>{recordno}</keys></delete>"))
    )
    assert child_tags(results(root)[0]) == ["status", "function", "controlid"]
    root = await post_xml(
        client, envelope(("y", "<delete><object>CUSTOMER</object><keys>99999</keys></delete>"))
    )
    assert (
        results(root)[0].findtext("errormessage/error/description2")
        == "Cannot find customer with key '99999' to delete."
    )
    vendor = "<create><VENDOR><VENDORID>V-0100</VENDORID><NAME>Supplier</NAME><DISPLAYCONTACT><PRINTAS>Supplier</PRINTAS></DISPLAYCONTACT></VENDOR></create>"
    root = await post_xml(client, envelope(("v", vendor)))
    assert root.findtext("operation/result/data/vendor/VENDORID") == "V-0100"
    vendor_no = root.findtext("operation/result/data/vendor/RECORDNO")
    root = await post_xml(
        client,
        envelope(
            (
                "vu",
                f"<update><VENDOR><RECORDNO>{vendor_no}</RECORDNO><STATUS>inactive</STATUS></VENDOR></update>",
            )
        ),
    )
    assert root.findtext("operation/result/status") == "success"
    root = await post_xml(
        client, envelope(("vd", f"<delete><object>VENDOR</object><keys>{vendor_no}</keys></delete>"))
    )
    assert root.findtext("operation/result/status") == "success"
    assert not [v for v in sim.records("DEMO-CO", "VENDOR") if v["VENDORID"] == "V-0100"]


async def test_glbatch_balance_and_multi_entity_location(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    root = await post_xml(
        client, envelope(("u", glbatch_xml([("6000", "1", "100", ""), ("2000", "-1", "90", "")])))
    )
    assert results(root)[0].findtext("status") == "failure"
    assert "balance" in (results(root)[0].findtext("errormessage/error/description2") or "")
    amount_variant = glbatch_xml(BALANCED, reference="REF-AMOUNT").replace("TRX_AMOUNT", "AMOUNT")
    root = await post_xml(client, envelope(("ok", amount_variant)))
    assert root.findtext("operation/result/status") == "success"
    batch_no = root.findtext("operation/result/data/glbatch/RECORDNO")
    lines = [e for e in sim.records("DEMO-CO", "GLENTRY") if e["BATCHNO"] == batch_no]
    assert [(e["TR_TYPE"], e["TRX_AMOUNT"]) for e in lines] == [("1", "100.25"), ("-1", "100.25")]
    uk = LOGIN.replace("DEMO-CO", "DEMO-ME|UK1")
    root = await post_xml(client, envelope(("m", glbatch_xml(BALANCED)), auth=uk))
    assert "LOCATION" in (root.findtext("operation/result/errormessage/error/description2") or "")
    wrong_entity = [("6000", "1", "5", "UK1-HQ"), ("2000", "-1", "5", "US1-HQ")]
    root = await post_xml(client, envelope(("w", glbatch_xml(wrong_entity)), auth=uk))
    assert "does not belong to entity UK1" in (
        root.findtext("operation/result/errormessage/error/description2") or ""
    )
    good = [("6000", "1", "5", "UK1-HQ"), ("2000", "-1", "5", "UK1")]
    root = await post_xml(client, envelope(("g", glbatch_xml(good, reference="ME-1")), auth=uk))
    assert root.findtext("operation/result/status") == "success"
    [batch] = [b for b in sim.records("DEMO-ME", "GLBATCH") if b["REFERENCENO"] == "ME-1"]
    assert (
        batch["MEGAENTITYID"] == "UK1" and batch["BATCH_DATE"] == "03/31/2024" and batch["STATE"] == "Posted"
    )


async def test_top_level_glbatch_unbalanced_by_entity_needs_baselocation_no(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    # factcheck.md §13: BASELOCATION_NO is required in multi-entity when entries do not balance by entity.
    top = LOGIN.replace("DEMO-CO", "DEMO-ME")
    cross = [("6000", "1", "5", "UK1-HQ"), ("2000", "-1", "5", "US1-HQ")]
    root = await post_xml(client, envelope(("x1", glbatch_xml(cross, reference="X-1")), auth=top))
    assert results(root)[0].findtext("status") == "failure"
    assert "BASELOCATION_NO" in (results(root)[0].findtext("errormessage/error/description2") or "")
    assert not [b for b in sim.records("DEMO-ME", "GLBATCH") if b["REFERENCENO"] == "X-1"]

    based = glbatch_xml(cross, reference="X-2").replace(
        "<ENTRIES>", "<BASELOCATION_NO>US1</BASELOCATION_NO><ENTRIES>"
    )
    root = await post_xml(client, envelope(("x2", based), auth=top))
    assert results(root)[0].findtext("status") == "success"
    [batch] = [b for b in sim.records("DEMO-ME", "GLBATCH") if b["REFERENCENO"] == "X-2"]
    assert batch["BASELOCATION_NO"] == "US1" and batch["MEGAENTITYID"] == ""

    each = [("6000", "1", "5", "UK1-HQ"), ("2000", "-1", "5", "UK1"), ("6000", "1", "7", "US1-HQ")]
    each.append(("2000", "-1", "7", "US1"))
    root = await post_xml(client, envelope(("x3", glbatch_xml(each, reference="X-3")), auth=top))
    assert results(root)[0].findtext("status") == "success"


async def test_create_invoice_enforces_xsd_order_and_returns_key(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    before = len(sim.records("DEMO-CO", "ARINVOICE"))
    swapped = INVOICE_XML.replace(
        "<datecreated><year>2024</year><month>06</month><day>30</day></datecreated><termname>N30</termname>",
        "<termname>N30</termname><datecreated><year>2024</year><month>06</month><day>30</day></datecreated>",
    )
    root = await post_xml(client, envelope(("bad", swapped)))
    assert root.findtext("control/status") == "failure" and root.find("operation") is None
    assert "Element 'termname': This element is not expected" in (
        root.findtext("errormessage/error/description2") or ""
    )
    assert len(sim.records("DEMO-CO", "ARINVOICE")) == before
    root = await post_xml(client, envelope(("good", INVOICE_XML)))
    recorded = fixture("xml_create_legacy_success_key.xml")
    assert (
        child_tags(results(root)[0])
        == child_tags(results(recorded)[0])
        == ["status", "function", "controlid", "key"]
    )
    key = results(root)[0].findtext("key") or ""
    [invoice] = [i for i in sim.records("DEMO-CO", "ARINVOICE") if i["RECORDNO"] == key]
    assert (
        invoice["RECORDID"] == "INV-900"
        and invoice["WHENCREATED"] == "06/30/2024"
        and invoice["WHENDUE"] == "07/30/2024"
    )
    assert invoice["TOTALENTERED"] == "76353.43"  # 76343.434 is rounded to cents (§2.5)
    items = [i for i in sim.records("DEMO-CO", "ARINVOICEITEM") if i["RECORDKEY"] == key]
    assert [(i["LINE_NO"], i["AMOUNT"], i["DEPARTMENTID"]) for i in items] == [
        ("1", "76343.43", ""),
        ("2", "10", "SALES"),
    ]
    root = await post_xml(client, envelope(("del", f'<delete_invoice key="{key}"/>')))
    assert child_tags(results(root)[0]) == child_tags(
        results(fixture("xml_delete_legacy_success_nodata.xml"))[0]
    )
    assert not [i for i in sim.records("DEMO-CO", "ARINVOICEITEM") if i["RECORDKEY"] == key]


async def test_invoice_lines_of_many_invoices_in_one_readbyquery(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    keys = sim.seed_arinvoices("DEMO-CO", 30, lines_per_invoice=3)
    wanted = keys[5:25]
    query = f"RECORDKEY IN ({','.join(repr(str(k)) for k in wanted)})"
    call = f"<readByQuery><object>ARINVOICEITEM</object><query>{query}</query><pagesize>1000</pagesize></readByQuery>"
    root = await post_xml(client, envelope(("items", call)))
    data = root.find("operation/result/data")
    assert data is not None and data.get("listtype") == "arinvoiceitem"
    assert data.get("count") == "60" and data.get("numremaining") == "0"
    assert {e.findtext("RECORDKEY") for e in data} == {str(k) for k in wanted}
    assert all(e.findtext("AMOUNT") for e in data)


# ---------------------------------------------------------------------------------------------- faults


async def test_status_429_fault_answers_gw_0010_without_executing(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    sim.faults.add(Fault(match="XML create:GLBATCH", kind="status", status=429, retry_after=3))
    response = await client.post(XML, content=envelope(("g", glbatch_xml(BALANCED))))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    root = etree.fromstring(response.content, PARSER)
    assert root.findtext("control/status") == "failure"
    assert root.findtext("errormessage/error/errorno") == "GW-0010"
    assert sim.records("DEMO-CO", "GLBATCH") == []
    assert sim.faults.calls["XML create:GLBATCH"] == 1 and sim.faults.calls[f"POST {XML}"] == 1


async def test_company_concurrency_limit_answers_429(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    sim.update_config(company_concurrency=1, latency=0.05)
    read = envelope(("r", "<read><object>GLACCOUNT</object><keys>1</keys></read>"))
    responses = await asyncio.gather(*(client.post(XML, content=read) for _ in range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 429, 429]
    throttled = next(r for r in responses if r.status_code == 429)
    assert etree.fromstring(throttled.content, PARSER).findtext("errormessage/error/errorno") == "GW-0010"
    assert sim.max_inflight_by_company["DEMO-CO"] == 1
    assert sim.faults.max_inflight >= 2  # rejected calls are in flight too, briefly


@pytest.mark.parametrize("status", [500, 502, 503, 524])
async def test_server_error_faults_have_empty_bodies(
    client: httpx.AsyncClient, sim: SageIntacctSimulator, status: int
) -> None:
    sim.faults.add(Fault(match=f"POST {XML}", kind="status", status=status))
    response = await client.post(XML, content=envelope(("c", customer_xml("C-5XX", "Never"))))
    assert response.status_code == status and response.content == b""
    assert not [c for c in sim.records("DEMO-CO", "CUSTOMER") if c["CUSTOMERID"] == "C-5XX"]


async def test_status_after_commit_writes_exactly_one_glbatch(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    sim.faults.add(Fault(match="XML create:GLBATCH", kind="status_after_commit", status=524))
    response = await client.post(
        XML, content=envelope(("g", glbatch_xml(BALANCED, reference="JE-77")), uniqueid="true")
    )
    assert response.status_code == 524 and response.content == b""
    state = (await client.get("/_sim/state/DEMO-CO/GLBATCH")).json()
    assert [b["REFERENCENO"] for b in state] == ["JE-77"]
    retry = await post_xml(client, envelope(("g", glbatch_xml(BALANCED, reference="JE-77")), uniqueid="true"))
    assert retry.findtext("operation/result/status") == "failure"
    assert len(sim.records("DEMO-CO", "GLBATCH")) == 1


async def test_drop_after_commit_under_asgi_transport(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    sim.faults.add(Fault(match="XML create_invoice", kind="drop_after_commit"))
    with pytest.raises(SimulatedConnectionDrop):
        await client.post(XML, content=envelope(("i", INVOICE_XML)))
    assert [i for i in sim.records("DEMO-CO", "ARINVOICE") if i["RECORDID"] == "INV-900"]


async def test_delay_faults_still_answer(client: httpx.AsyncClient, sim: SageIntacctSimulator) -> None:
    sim.faults.add(Fault(match="XML readByQuery:*", kind="delay", delay=0.01))
    sim.faults.add(Fault(match="XML create:CUSTOMER", kind="delay_after_commit", delay=0.01))
    root = await post_xml(
        client, envelope(("q", "<readByQuery><object>VENDOR</object><query></query></readByQuery>"))
    )
    assert attrs(root.find("operation/result/data"))["count"] == "2"
    root = await post_xml(client, envelope(("c", customer_xml("C-SLOW", "Slow"))))
    assert root.findtext("operation/result/status") == "success"
    assert sim.faults.armed == []


# ---------------------------------------------------------------------------------------------- REST


async def rest_token(client: httpx.AsyncClient, username: str = "demo-user@DEMO-CO") -> dict[str, object]:
    form = {
        "grant_type": "client_credentials",
        "client_id": "sandbox-rest-client",
        "client_secret": "sandbox-rest-secret",
        "username": username,
    }
    response = await client.post(
        f"{API}/oauth2/token",
        content=urlencode(form),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def bearer(token: dict[str, object]) -> dict[str, str]:
    return {"authorization": f"Bearer {token['access_token']}"}


def load_json(name: str) -> object:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"recorded fixture {name} not available")
    return json.loads(path.read_text())


async def test_rest_token_and_customer_lifecycle(
    client: httpx.AsyncClient, sim: SageIntacctSimulator
) -> None:
    token = await rest_token(client)
    assert token["token_type"] == "Bearer" and isinstance(token["expires_in"], int)
    assert str(token["access_token"]).count(".") == 2  # a JWT
    headers = bearer(token)
    listing = (await client.get(f"{API}/objects/accounts-receivable/customer", headers=headers)).json()
    recorded = load_json("rest_list_customers.json")
    assert isinstance(recorded, dict)
    assert set(recorded["ia::meta"]) <= set(listing["ia::meta"])
    assert [set(r) for r in listing["ia::result"]] == [{"key", "id", "href"}] * 3
    assert listing["ia::result"][0] == {
        "key": "10",
        "id": "C-0001",
        "href": "/objects/accounts-receivable/customer/10",
    }
    created = await client.post(
        f"{API}/objects/accounts-receivable/customer",
        headers=headers,
        json={
            "id": "C-REST",
            "name": "Rest Customer",
            "creditLimit": 2500.75,
            "contacts": {"default": {"email1": "r@example.com"}},
        },
    )
    assert created.status_code == 201
    reference = load_json("rest_update_reference_200.json")
    assert isinstance(reference, dict)
    assert set(created.json()) == set(reference) and set(created.json()["ia::result"]) == set(
        reference["ia::result"]
    )
    assert created.json()["ia::meta"] == reference["ia::meta"]
    key = created.json()["ia::result"]["key"]
    got = (await client.get(f"{API}/objects/accounts-receivable/customer/{key}", headers=headers)).json()
    assert (
        got["ia::result"]["creditLimit"] == 2500.75
        and got["ia::result"]["contacts"]["default"]["email1"] == "r@example.com"
    )
    assert got["ia::result"]["audit"]["createdDateTime"].endswith("Z")
    patched = await client.patch(
        f"{API}/objects/accounts-receivable/customer/{key}", headers=headers, json={"status": "inactive"}
    )
    assert patched.status_code == 200 and patched.json()["ia::result"]["id"] == "C-REST"
    [stored] = [c for c in sim.records("DEMO-CO", "CUSTOMER") if c["CUSTOMERID"] == "C-REST"]
    assert stored["STATUS"] == "inactive" and stored["NAME"] == "Rest Customer"
    deleted = await client.delete(f"{API}/objects/accounts-receivable/customer/{key}", headers=headers)
    assert deleted.status_code == 204 and deleted.content == b""
    missing = await client.get(f"{API}/objects/accounts-receivable/customer/{key}", headers=headers)
    assert missing.status_code == 404 and "ia::error" in missing.json()["ia::result"]
    vendors = (await client.get(f"{API}/objects/accounts-payable/vendor", headers=headers)).json()
    assert vendors["ia::meta"]["totalCount"] == 2
    account = (await client.get(f"{API}/objects/general-ledger/account/7", headers=headers)).json()[
        "ia::result"
    ]
    assert account["id"] == "4000" and account["accountType"] == "incomeStatement"
    assert sim.faults.calls[f"GET {API}/objects/accounts-receivable/customer/{{key}}"] == 2
    assert sim.faults.calls[f"PATCH {API}/objects/accounts-receivable/customer/{{key}}"] == 1


async def test_rest_query_service_like_the_recorded_example(client: httpx.AsyncClient) -> None:
    headers = bearer(await rest_token(client))
    request = load_json("rest_query_request_vendor.json")
    response = await client.post(f"{API}/services/core/query", headers=headers, json=request)
    assert response.status_code == 200, response.text
    recorded = load_json("rest_query_response_vendor.json")
    assert isinstance(recorded, dict) and isinstance(request, dict)
    body = response.json()
    assert set(body["ia::meta"]) == set(recorded["ia::meta"])
    assert [list(row) for row in body["ia::result"]] == [list(row) for row in recorded["ia::result"]]
    assert [row["id"] for row in body["ia::result"]] == ["V-0001", "V-0002"]
    assert body["ia::result"][0]["href"] == "/objects/accounts-payable/vendor/30"
    paged = {
        "object": "accounts-receivable/customer",
        "fields": ["id"],
        "orderBy": [{"id": "desc"}],
        "size": 2,
    }
    first = (await client.post(f"{API}/services/core/query", headers=headers, json=paged)).json()
    assert [r["id"] for r in first["ia::result"]] == ["C-0003", "C-0002"] and first["ia::meta"]["next"] == 3
    second = (
        await client.post(f"{API}/services/core/query", headers=headers, json={**paged, "start": 3})
    ).json()
    assert [r["id"] for r in second["ia::result"]] == ["C-0001"] and second["ia::meta"]["next"] is None
    filtered = {
        "object": "accounts-receivable/customer",
        "fields": ["id", "name"],
        "filters": [{"$in": {"id": ["C-0001", "C-0003"]}}, {"$contains": {"name": "Globex"}}],
        "filterExpression": "1 or 2",
    }
    rows = (await client.post(f"{API}/services/core/query", headers=headers, json=filtered)).json()[
        "ia::result"
    ]
    assert {r["id"] for r in rows} == {"C-0001", "C-0002", "C-0003"}


async def test_rest_errors(client: httpx.AsyncClient, sim: SageIntacctSimulator, clock: Clock) -> None:
    token = await rest_token(client)
    headers = bearer(token)
    empty = await client.post(f"{API}/objects/accounts-receivable/customer", headers=headers, content=b"")
    recorded = load_json("rest_error_400_invalid_request.json")
    assert isinstance(recorded, dict)
    assert empty.status_code == 400
    error = empty.json()["ia::result"]["ia::error"]
    expected = recorded["ia::result"]["ia::error"]
    assert set(error) == set(expected)
    assert {k: error[k] for k in ("code", "message", "errorId", "additionalInfo")} == {
        k: expected[k] for k in ("code", "message", "errorId", "additionalInfo")
    }
    assert empty.json()["ia::meta"] == recorded["ia::meta"]
    unknown = await client.post(
        f"{API}/objects/accounts-receivable/customer", headers=headers, json={"name": "X", "color": "red"}
    )
    assert unknown.status_code == 400
    assert unknown.json()["ia::result"]["ia::error"]["details"][0]["errorId"] == "REST-1043"
    duplicate = await client.post(
        f"{API}/objects/accounts-receivable/customer", headers=headers, json={"id": "C-0001", "name": "Dup"}
    )
    assert duplicate.status_code == 422
    assert (await client.get(f"{API}/objects/accounts-receivable/customer")).status_code == 401
    bad_client = await client.post(
        f"{API}/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-rest-client",
            "client_secret": "x",
            "username": "demo-user@DEMO-CO",
        },
    )
    assert bad_client.status_code == 401 and bad_client.json() == {"error": "invalid_client"}
    refresh = {
        "grant_type": "refresh_token",
        "client_id": "sandbox-rest-client",
        "client_secret": "sandbox-rest-secret",
    }
    rotated = await client.post(
        f"{API}/oauth2/token", data={**refresh, "refresh_token": str(token["refresh_token"])}
    )
    assert rotated.status_code == 200 and rotated.json()["refresh_token"] != token["refresh_token"]
    reused = await client.post(
        f"{API}/oauth2/token", data={**refresh, "refresh_token": str(token["refresh_token"])}
    )
    assert reused.status_code == 400 and reused.json() == {"error": "invalid_grant"}
    clock.now += sim.config.access_token_ttl + 1
    expired = await client.get(f"{API}/objects/accounts-receivable/customer", headers=headers)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "GW-0034"
    fresh = await client.get(f"{API}/objects/accounts-receivable/customer", headers=bearer(rotated.json()))
    assert fresh.status_code == 401  # the rotated pair was issued before the clock moved and expired too


async def test_rest_and_xml_share_customers(client: httpx.AsyncClient) -> None:
    headers = bearer(await rest_token(client))
    created = await client.post(
        f"{API}/objects/accounts-receivable/customer",
        headers=headers,
        json={"id": "C-FROM-REST", "name": "From REST"},
    )
    assert created.status_code == 201
    root = await post_xml(
        client,
        envelope(
            (
                "q",
                "<readByQuery><object>CUSTOMER</object><query>CUSTOMERID = 'C-FROM-REST'</query></readByQuery>",
            )
        ),
    )
    assert root.findtext("operation/result/data/customer/NAME") == "From REST"
    assert root.findtext("operation/result/data/customer/DISPLAYCONTACT/PRINTAS") == "From REST"
    await post_xml(client, envelope(("c", customer_xml("C-FROM-XML", "From XML"))))
    query = {
        "object": "accounts-receivable/customer",
        "fields": ["id", "name"],
        "filters": [{"$eq": {"id": "C-FROM-XML"}}],
    }
    rows = (await client.post(f"{API}/services/core/query", headers=headers, json=query)).json()["ia::result"]
    assert rows == [{"id": "C-FROM-XML", "name": "From XML"}]


async def test_rest_faults_and_concurrency(client: httpx.AsyncClient, sim: SageIntacctSimulator) -> None:
    headers = bearer(await rest_token(client))
    sim.faults.add(Fault(match=f"POST {API}/objects/*", kind="status_after_commit", status=502))
    response = await client.post(
        f"{API}/objects/accounts-payable/vendor", headers=headers, json={"id": "V-502", "name": "Landed"}
    )
    assert response.status_code == 502 and response.content == b""
    assert [v for v in sim.records("DEMO-CO", "VENDOR") if v["VENDORID"] == "V-502"]
    sim.faults.add(Fault(match=f"GET {API}/objects/*", kind="status", status=429, retry_after=1))
    throttled = await client.get(f"{API}/objects/accounts-payable/vendor", headers=headers)
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "GW-0010"


async def test_seed_and_state_control_routes(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_sim/seed/arinvoices", json={"company_id": "DEMO-ME", "count": 40, "lines_per_invoice": 2}
    )
    assert response.status_code == 201 and response.json()["created"] == 40
    invoices = (await client.get("/_sim/state/DEMO-ME/ARINVOICE")).json()
    items = (await client.get("/_sim/state/DEMO-ME/arinvoiceitem")).json()
    assert len(invoices) == 43 and len(items) == 86
    assert (await client.get("/_sim/config")).json()["company_concurrency"] == 2
    assert (await client.patch("/_sim/config", json={"nope": 1})).status_code == 400


async def test_mounted_under_a_prefix(sim: SageIntacctSimulator) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/intacct", app=sim)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://host") as c:
        response = await c.post(f"/intacct{XML}", content=envelope(("s", "<getAPISession/>")))
        assert response.status_code == 200
        assert etree.fromstring(response.content, PARSER).findtext("operation/result/status") == "success"
