"""The gateway's upstream client (api/transport.py) on both transports, against tiny loopback servers.

What matters is how failures are classified: "never sent" (``ConnectError``/``ConnectTimeout``) lets
``connectors/http.py`` re-send any call, "sent, outcome unknown" (a read timeout, a dropped connection) must
not re-send an unguarded write.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import BaseModel

from api.settings import Settings
from api.transport import TRANSPORTS, HttpTransport, make_http_client
from connectors.base import ConnectorContext, MemoryCredentialStore, UpstreamCall
from connectors.errors import OutcomeUnknown
from connectors.http import RetryPolicy, send

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002, max_retry_after=5)


@asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[str]:
    """``handler`` on a loopback port; yields its base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


class _Counter:
    """A server that reads each request's head, counts it, then drops the connection without answering."""

    def __init__(self) -> None:
        self.requests = 0

    async def drop_after_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request arrived: whatever happens next, it was sent
        self.requests += 1
        writer.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()  # until the client gives up and closes
    writer.close()


async def _answer_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    body = json.dumps({"calls": {"seen": head.split(b" ", 2)[1].decode()}}).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


def test_aiohttp_is_the_default_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGERBRIDGE_HTTP_TRANSPORT", raising=False)
    assert Settings().http_transport == "aiohttp"


async def test_aiohttp_transport_reports_a_drop_after_sending_as_sent() -> None:
    """httpx_aiohttp says ConnectTimeout ("never sent") here; connectors would re-send a write."""
    server = _Counter()
    async with _serve(server.drop_after_request) as url, make_http_client(5.0, "aiohttp") as client:
        with pytest.raises(httpx.HTTPError) as caught:
            await client.post(f"{url}/journals", content=b"{}")
    assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError), repr(caught.value)
    assert not isinstance(caught.value, httpx.ConnectError | httpx.ConnectTimeout)


async def test_aiohttp_transport_reports_a_refused_connection_as_never_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        async with make_http_client(5.0, "aiohttp") as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(f"http://127.0.0.1:{port}/journals", content=b"{}")


async def test_aiohttp_transport_serves_a_real_call() -> None:
    async with _serve(_answer_json) as url, make_http_client(5.0, "aiohttp") as client:
        r = await client.get(f"{url}/_sim/counters")
    assert r.status_code == 200 and r.json() == {"calls": {"seen": "/_sim/counters"}}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_read_timeout_is_a_sent_request_with_an_unknown_outcome(transport: HttpTransport) -> None:
    async with _serve(_never_answer) as url, make_http_client(0.3, transport) as client:
        with pytest.raises(httpx.HTTPError) as caught:
            await client.post(f"{url}/journals", content=b"{}")
    assert isinstance(caught.value, httpx.ReadTimeout), repr(caught.value)
    assert not isinstance(caught.value, httpx.ConnectError | httpx.ConnectTimeout)


class _Empty(BaseModel):
    pass


async def test_connectors_never_resend_an_unguarded_write_dropped_after_sending_on_aiohttp() -> None:
    server = _Counter()
    async with _serve(server.drop_after_request) as url, make_http_client(5.0, "aiohttp") as client:
        ctx = ConnectorContext(http=client, app=_Empty(), settings=_Empty(), store=MemoryCredentialStore())
        call = UpstreamCall("test", "POST", f"{url}/journals", "write", label="POST /journals")
        with pytest.raises(OutcomeUnknown):
            await send(
                ctx, call, httpx.Request("POST", f"{url}/journals", content=b"{}"), retry="never", policy=FAST
            )
    assert server.requests == 1


class _CookieSetter:
    """Answers every request with ``Set-Cookie`` and records the ``Cookie`` header each request carried."""

    def __init__(self) -> None:
        self.cookies: list[str | None] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            lines = head.decode("latin-1").split("\r\n")[1:]
            found = [v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k.lower() == "cookie"]
            self.cookies.append(found[0] if found else None)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n"
                b"Set-Cookie: session=tenant-a-secret; Path=/\r\n\r\n{}"
            )
            await writer.drain()
        writer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_shared_client_never_sends_back_an_upstream_cookie(transport: HttpTransport) -> None:
    """One client serves every tenant: a cookie set on tenant A's call must not ride on tenant B's."""
    server = _CookieSetter()
    async with _serve(server.handle) as url, make_http_client(5.0, transport) as client:
        for _ in range(3):
            r = await client.get(f"{url}/v3.1/contacts")
            assert r.status_code == 200 and "session=" in r.headers["set-cookie"]
        assert len(client.cookies) == 0
    assert server.cookies == [None, None, None]


def _answer(raw: bytes, *, close: bool = True) -> Handler:
    """A server that answers every request with ``raw`` (then closes the connection)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return handle


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_gzip_body_is_decoded_and_a_chunked_one_gets_no_invented_length(
    transport: HttpTransport,
) -> None:
    import gzip

    packed = gzip.compress(b'{"ok":true}')
    gzipped = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(packed)}\r\nConnection: close\r\n\r\n".encode()
        + packed
    )
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'Connection: close\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )
    async with make_http_client(5.0, transport) as client:
        async with _serve(_answer(gzipped)) as url:
            r = await client.get(url)
        assert r.json() == {"ok": True} and r.headers["content-encoding"] == "gzip"
        async with _serve(_answer(chunked)) as url:
            r = await client.get(url)
        assert r.json() == {"a": 1} and "content-length" not in r.headers


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_truncated_or_malformed_answer_is_sent_with_an_unknown_outcome(
    transport: HttpTransport,
) -> None:
    truncated = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"partial'
    garbage = b"NOT-HTTP garbage\r\n\r\n"
    async with make_http_client(5.0, transport) as client:
        for raw in (truncated, garbage):
            async with _serve(_answer(raw)) as url:
                with pytest.raises(httpx.HTTPError) as caught:
                    await client.post(f"{url}/journals", content=b"{}")
            assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError), repr(caught.value)
