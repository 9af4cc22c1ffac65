"""The Intacct simulator under a real uvicorn server on loopback: faults that need a real connection."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from sandbox.faults import Fault
from sandbox.sage_intacct import SageIntacctSimulator, SimConfig

XML = "/ia/xml/xmlgw.phtml"
REQUEST = (
    '<?xml version="1.0" encoding="UTF-8"?><request><control><senderid>sandbox-sender</senderid>'
    "<password>sandbox-sender-password</password><controlid>c</controlid><uniqueid>true</uniqueid>"
    "<dtdversion>3.0</dtdversion></control><operation><authentication><login><userid>demo-user</userid>"
    "<companyid>DEMO-CO</companyid><password>demo-password</password></login></authentication><content>"
    '<function controlid="{controlid}"><create><GLBATCH><JOURNAL>GJ</JOURNAL><BATCH_DATE>01/31/2024</BATCH_DATE>'
    "<BATCH_TITLE>Dropped</BATCH_TITLE><REFERENCENO>{reference}</REFERENCENO><ENTRIES>"
    "<GLENTRY><ACCOUNTNO>6000</ACCOUNTNO><TR_TYPE>1</TR_TYPE><TRX_AMOUNT>42.00</TRX_AMOUNT></GLENTRY>"
    "<GLENTRY><ACCOUNTNO>1000</ACCOUNTNO><TR_TYPE>-1</TR_TYPE><TRX_AMOUNT>42.00</TRX_AMOUNT></GLENTRY>"
    "</ENTRIES></GLBATCH></create></function></content></operation></request>"
)


@pytest.fixture
def served() -> Iterator[tuple[SageIntacctSimulator, str]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    sim = SageIntacctSimulator(SimConfig(public_url=base))
    server = uvicorn.Server(uvicorn.Config(sim, lifespan="off", log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sim, base
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


async def test_drop_after_commit_breaks_the_connection_but_keeps_the_write(
    served: tuple[SageIntacctSimulator, str],
) -> None:
    sim, base = served
    sim.faults.add(Fault(match="XML create:GLBATCH", kind="drop_after_commit"))
    async with httpx.AsyncClient(base_url=base) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(XML, content=REQUEST.format(controlid="je-1", reference="DROP-1"))
        state = (await client.get("/_sim/state/DEMO-CO/GLBATCH")).json()
        assert [b["REFERENCENO"] for b in state] == ["DROP-1"]
        # The retry with the same function controlid is refused (uniqueid=true): still exactly one batch.
        retry = await client.post(XML, content=REQUEST.format(controlid="je-1", reference="DROP-1"))
        assert retry.status_code == 200 and "<status>failure</status>" in retry.text
        assert len((await client.get("/_sim/state/DEMO-CO/GLBATCH")).json()) == 1


async def test_delay_after_commit_times_the_client_out_after_the_write(
    served: tuple[SageIntacctSimulator, str],
) -> None:
    sim, base = served
    sim.faults.add(Fault(match="XML create:GLBATCH", kind="delay_after_commit", delay=1.0))
    async with httpx.AsyncClient(base_url=base) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(XML, content=REQUEST.format(controlid="je-2", reference="SLOW-1"), timeout=0.2)
        state = (await client.get("/_sim/state/DEMO-CO/GLBATCH")).json()
        assert [b["REFERENCENO"] for b in state] == ["SLOW-1"]
