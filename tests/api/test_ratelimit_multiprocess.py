"""Budgets shared across OS processes (CONTRACT §10 "replicas behave as one gateway").

* two real ``uvicorn`` gateway processes on loopback share one PostgreSQL database and one Sage simulator
  served by its own ``uvicorn``: a burst of 200 concurrent calls against a policy of 50 admits exactly 50;
* two limiter instances in two OS processes share one Redis: the same burst admits exactly 50.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ADMIN_TOKEN, POSTGRES_URL, TEST_KEYRING, _admin_url

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("LEDGERBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BURST_POLICY = {
    "burst": {
        "kind": "quota",
        "limit": 50,
        "window": 86_400,
        "partition": "scope",
        "provider": "sage_accounting",
        "kinds": ["read"],
    }
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{url} exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture
def pg_database(pg_template: str | None) -> Iterator[str]:
    if not POSTGRES_URL or pg_template is None:
        pytest.skip(
            "LEDGERBRIDGE_TEST_POSTGRES_URL is not set (CI sets it): the multi-process burst needs PostgreSQL"
        )
    admin = create_engine(_admin_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"lbt_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _admin_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop()


async def test_burst_of_200_admits_exactly_50_across_two_uvicorn_gateways(
    pg_database: str, processes: Processes
) -> None:
    sim_port, ports = free_port(), [free_port(), free_port()]
    sim = f"http://127.0.0.1:{sim_port}"
    sim_proc = processes.start(
        [
            "-m",
            "sandbox.sage_accounting",
            "--host",
            "127.0.0.1",
            "--port",
            str(sim_port),
            "--log-level",
            "warning",
        ],
        {},
    )
    wait_until_up(f"{sim}/_sim/counters", sim_proc)
    gateways = []
    for port in ports:
        env = {
            "LEDGERBRIDGE_ENV": "test",
            "LEDGERBRIDGE_DATABASE_URL": pg_database,
            "LEDGERBRIDGE_KEYRING": TEST_KEYRING,
            "LEDGERBRIDGE_ACTIVE_KEY_ID": "k1",
            "LEDGERBRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEDGERBRIDGE_PUBLIC_URL": f"http://127.0.0.1:{ports[0]}",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_ID": "ledgerbridge-sandbox",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_SECRET": "ledgerbridge-sandbox-secret",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_AUTHORIZE_URL": f"{sim}/oauth2/auth/central?filter=apiv3.1",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_TOKEN_URL": f"{sim}/token",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_REVOKE_URL": f"{sim}/revoke",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_API_URL": f"{sim}/v3.1",
            "LEDGERBRIDGE_RATE_LIMIT_POLICIES": json.dumps(BURST_POLICY),
            "LEDGERBRIDGE_LOG_LEVEL": "WARNING",
        }
        args = [
            "-m",
            "uvicorn",
            "--factory",
            "api.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        proc = processes.start([*args, "--log-level", "warning"], env)
        gateways.append((f"http://127.0.0.1:{port}", proc))
    for url, proc in gateways:
        wait_until_up(f"{url}/healthz", proc)

    first, second = gateways[0][0], gateways[1][0]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        r = await client.post(
            f"{first}/v1/admin/tenants",
            json={"name": "burst"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 201, r.text
        key = r.json()["api_key"]
        bearer = {"Authorization": f"Bearer {key}"}
        r = await client.post(f"{first}/v1/connections", json={"provider": "sage_accounting"}, headers=bearer)
        assert r.status_code == 201, r.text
        approve = await client.get(r.json()["authorization_url"])
        assert approve.status_code == 302, approve.text
        callback = await client.get(approve.headers["location"])
        assert callback.status_code == 200, callback.text
        conn = callback.json()["id"]
        headers = {**bearer, "X-Connection-Id": conn}
        # One call through each replica first (2 of the 50): both are warm when the burst starts, so neither
        # can spend the whole budget while the other is still opening its first connections.
        for url in (first, second):
            warm = await client.get(f"{url}/v1/contacts", headers=headers)
            assert warm.status_code == 200, warm.text
        assert (await client.delete(f"{sim}/_sim/counters")).status_code == 204

        responses = await asyncio.gather(
            *(client.get(f"{(first, second)[i % 2]}/v1/contacts", headers=headers) for i in range(200))
        )
        counters = (await client.get(f"{sim}/_sim/counters")).json()

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 48, sorted(set(statuses))  # 50 in all, with the two warm-up calls
    assert statuses.count(429) == 152
    served_by = {str(r.request.url).split("/v1")[0] for r in responses if r.status_code == 200}
    assert served_by == {first, second}, "both replicas admitted calls from the one shared budget"
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["violated-policies"] == ["burst"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert counters["calls"].get("GET /v3.1/contacts") == 48


def _burst_worker(redis_url: str, prefix: str, start_at: float, calls: int) -> int:
    """One OS process: ``calls`` concurrent admissions through its own limiter; returns how many passed."""
    from api.ratelimit import Governor, Policy
    from api.ratelimit.redis_store import RedisStore
    from connectors.base import UpstreamCall
    from connectors.errors import RateLimited

    async def run() -> int:
        policy = Policy("burst", "quota", 50, "app", provider="sage_accounting", window=86_400)
        governor = Governor([policy], RedisStore(redis_url, prefix=prefix))
        await governor.start()
        call = UpstreamCall("sage_accounting", "GET", "http://upstream/v3.1/contacts", "read", scope="biz")

        async def one() -> bool:
            try:
                async with governor.admit(call, "tenant-1"):
                    return True
            except RateLimited:
                return False

        await asyncio.sleep(max(0.0, start_at - time.time()))
        admitted = sum(await asyncio.gather(*(one() for _ in range(calls))))
        await governor.close()
        return admitted

    return asyncio.run(run())


def test_burst_of_200_admits_exactly_50_across_two_processes_on_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    finally:
        client.close()
    prefix = f"lbtest:{uuid.uuid4().hex[:8]}:"
    start_at = time.time() + 3.0
    try:
        with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_burst_worker, REDIS_URL, prefix, start_at, 100) for _ in range(2)]
            admitted = [f.result(timeout=60) for f in futures]
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
    assert sum(admitted) == 50, admitted
