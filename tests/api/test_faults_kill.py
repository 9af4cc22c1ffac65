"""``kill -9`` of a real gateway process between sending a write and recording its outcome.

A simulator runs in its own uvicorn process; gateway processes share one database (SQLite file or
PostgreSQL). The write lands upstream while the gateway waits for the answer (``delay_after_commit``); the
gateway is killed with SIGKILL; a fresh gateway process gets the client's retry with the same key and must
resume the recorded intent (same duplicate guard) instead of posting again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from api.db import sync_url
from tests.conftest import ADMIN_TOKEN, REPO, TEST_KEYRING

pytestmark = pytest.mark.slow

INVOICES = "POST /v3.1/sales_invoices"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"process exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if (await client.get(url)).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never came up")


def gateway_env(database_url: str, sim: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERBRIDGE_")}
    env.update(
        {
            "LEDGERBRIDGE_ENV": "test",
            "LEDGERBRIDGE_DATABASE_URL": database_url,
            "LEDGERBRIDGE_KEYRING": TEST_KEYRING,
            "LEDGERBRIDGE_ACTIVE_KEY_ID": "k1",
            "LEDGERBRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEDGERBRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_ID": "ledgerbridge-sandbox",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_SECRET": "ledgerbridge-sandbox-secret",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_AUTHORIZE_URL": f"{sim}/oauth2/auth/central?filter=apiv3.1",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_TOKEN_URL": f"{sim}/token",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_REVOKE_URL": f"{sim}/revoke",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_API_URL": f"{sim}/v3.1",
            "LEDGERBRIDGE_UPSTREAM_TIMEOUT_SECONDS": "60",
            "LEDGERBRIDGE_WRITE_LEASE_SECONDS": "1.5",
            "LEDGERBRIDGE_RECONCILER_INTERVAL_SECONDS": "0",
        }
    )
    return env


def gateway_args(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "api.cli:_factory", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def intent_states(database_url: str) -> list[str]:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT state FROM write_intents"))]
    finally:
        engine.dispose()


async def connect_sage(gw: httpx.AsyncClient) -> tuple[str, str]:
    r = await gw.post(
        "/v1/admin/tenants", json={"name": "kill"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    key: str = r.json()["api_key"]
    h = {"Authorization": f"Bearer {key}"}
    created = await gw.post("/v1/connections", json={"provider": "sage_accounting"}, headers=h)
    assert created.status_code == 201, created.text
    async with httpx.AsyncClient() as browser:
        approve = await browser.get(created.json()["authorization_url"])
        assert approve.status_code == 302, approve.text
        callback = await browser.get(approve.headers["location"])
        assert callback.status_code == 200, callback.text
    return key, created.json()["id"]


async def invoice_body(gw: httpx.AsyncClient, headers: dict[str, str], reference: str) -> dict[str, Any]:
    customer = (await gw.get("/v1/contacts?role=customer&page_size=1", headers=headers)).json()["data"][0]
    accounts = {
        a["code"]: a["id"]
        for a in (await gw.get("/v1/accounts?page_size=200", headers=headers)).json()["data"]
    }
    line = {"description": "Work", "account_id": accounts["4000"], "unit_price": "250.00"}
    line |= {"tax_rate_id": "GB_ZERO", "tax_amount": "0.00"}
    return {"contact_id": customer["id"], "issue_date": "2026-11-02", "reference": reference, "lines": [line]}


async def upstream_invoices(sim: httpx.AsyncClient, reference: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = (await sim.get("/_sim/state/sales_invoices")).json()
    return [r for r in records if r.get("reference") == reference]


async def test_kill_9_between_sending_and_recording_then_retry_on_a_fresh_process(database_url: str) -> None:
    sim_port, gw1_port, gw2_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim_args = [
        sys.executable,
        "-m",
        "sandbox.sage_accounting",
        "--port",
        str(sim_port),
        "--log-level",
        "warning",
    ]
    reference = "KILL-9-001"
    idem = "kill-9-retry-key"
    with process(sim_args, dict(os.environ)) as sim_proc:
        await wait_ready(f"{sim_url}/_sim/info", sim_proc)
        async with httpx.AsyncClient(base_url=sim_url) as sim:
            with process(gateway_args(gw1_port), gateway_env(database_url, sim_url, gw1_port)) as gw1_proc:
                await wait_ready(f"http://127.0.0.1:{gw1_port}/healthz", gw1_proc)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw1_port}", timeout=60) as gw1:
                    key, connection_id = await connect_sage(gw1)
                    headers = {"Authorization": f"Bearer {key}", "X-Connection-Id": connection_id}
                    body = await invoice_body(gw1, headers, reference)
                    fault = {"match": INVOICES, "kind": "delay_after_commit", "delay": 60}
                    assert (await sim.post("/_sim/faults", json=fault)).status_code == 201
                    pending = asyncio.create_task(
                        gw1.post("/v1/invoices", json=body, headers={**headers, "Idempotency-Key": idem})
                    )
                    for _ in range(400):  # the write lands upstream; the gateway is still waiting
                        if await upstream_invoices(sim, reference):
                            break
                        await asyncio.sleep(0.025)
                    assert len(await upstream_invoices(sim, reference)) == 1
                    assert intent_states(database_url) == ["sending"]
                    os.kill(gw1_proc.pid, signal.SIGKILL)
                    gw1_proc.wait(10)
                    with pytest.raises(httpx.TransportError):
                        await pending
            assert (await sim.delete("/_sim/faults")).status_code == 204

            with process(gateway_args(gw2_port), gateway_env(database_url, sim_url, gw2_port)) as gw2_proc:
                await wait_ready(f"http://127.0.0.1:{gw2_port}/healthz", gw2_proc)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw2_port}", timeout=60) as gw2:
                    retry_headers = {**headers, "Idempotency-Key": idem}
                    statuses = []
                    for _ in range(
                        200
                    ):  # 409 until the dead process's lease runs out, then the resumed write
                        r = await gw2.post("/v1/invoices", json=body, headers=retry_headers)
                        statuses.append(r.status_code)
                        if r.status_code != 409:
                            break
                        assert r.headers["retry-after"] == "1"
                        await asyncio.sleep(0.1)
                    assert r.status_code == 201, r.text
                    assert set(statuses[:-1]) <= {409}
                    assert r.json()["reference"] == reference
                    replay = await gw2.post("/v1/invoices", json=body, headers=retry_headers)
                    assert replay.status_code == 201
                    assert replay.headers["idempotent-replayed"] == "true"
                    assert replay.json()["id"] == r.json()["id"]

            [record] = await upstream_invoices(sim, reference)
            assert record["id"] == r.json()["id"]
            counters = (await sim.get("/_sim/counters")).json()["calls"]
            assert counters[INVOICES] == 2  # the first send and the resumed one, with the same idempotency_id
            assert intent_states(database_url) == ["succeeded"]


async def test_same_key_across_two_gateway_processes_posts_once(database_url: str) -> None:
    """Replicas share the database: concurrent retries with one key, spread over two processes, reach the
    upstream once; the others get 409 (in flight) or the stored result."""
    sim_port, gw1_port, gw2_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim_args = [
        sys.executable,
        "-m",
        "sandbox.sage_accounting",
        "--port",
        str(sim_port),
        "--log-level",
        "warning",
    ]
    reference = "REPLICAS-001"
    with (
        process(sim_args, dict(os.environ)) as sim_proc,
        process(gateway_args(gw1_port), gateway_env(database_url, sim_url, gw1_port)) as gw1_proc,
        process(gateway_args(gw2_port), gateway_env(database_url, sim_url, gw2_port)) as gw2_proc,
    ):
        await wait_ready(f"{sim_url}/_sim/info", sim_proc)
        await wait_ready(f"http://127.0.0.1:{gw1_port}/healthz", gw1_proc)
        await wait_ready(f"http://127.0.0.1:{gw2_port}/healthz", gw2_proc)
        async with (
            httpx.AsyncClient(base_url=sim_url) as sim,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw1_port}", timeout=60) as gw1,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw2_port}", timeout=60) as gw2,
        ):
            key, connection_id = await connect_sage(gw1)
            headers = {"Authorization": f"Bearer {key}", "X-Connection-Id": connection_id}
            body = await invoice_body(gw1, headers, reference)
            fault = {"match": INVOICES, "kind": "delay", "delay": 0.5}
            assert (await sim.post("/_sim/faults", json=fault)).status_code == 201
            keyed = {**headers, "Idempotency-Key": "replicas-key"}
            responses = await asyncio.gather(
                *((gw1 if i % 2 else gw2).post("/v1/invoices", json=body, headers=keyed) for i in range(20))
            )
            statuses = [r.status_code for r in responses]
            assert set(statuses) <= {201, 409}, statuses
            assert 201 in statuses
            assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
            counters = (await sim.get("/_sim/counters")).json()["calls"]
            assert counters[INVOICES] == 1
            assert len(await upstream_invoices(sim, reference)) == 1
