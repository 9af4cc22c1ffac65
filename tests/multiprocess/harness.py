"""Real processes on loopback: simulators in their own uvicorn, several ``ledgerbridge serve`` replicas."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import ADMIN_TOKEN, REPO, TEST_KEYRING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"process exited early:\n{out[-4000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@dataclass
class Processes:
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], env: dict[str, str], ready_url: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_ready(ready_url, proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def processes() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop()


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    admin = create_engine(
        make_url(base_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    name = f"lbmp_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(base_url)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def gateway_env(
    database_url: str, *, sage: str | None = None, intacct: str | None = None, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERBRIDGE_")}
    env.update(
        {
            "LEDGERBRIDGE_DATABASE_URL": database_url,
            "LEDGERBRIDGE_KEYRING": TEST_KEYRING,
            "LEDGERBRIDGE_ACTIVE_KEY_ID": "k1",
            "LEDGERBRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEDGERBRIDGE_LOG_LEVEL": "WARNING",
        }
    )
    if sage:
        env.update(
            {
                "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_ID": "ledgerbridge-sandbox",
                "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_SECRET": "ledgerbridge-sandbox-secret",
                "LEDGERBRIDGE_SAGE_ACCOUNTING_AUTHORIZE_URL": f"{sage}/oauth2/auth/central?filter=apiv3.1",
                "LEDGERBRIDGE_SAGE_ACCOUNTING_TOKEN_URL": f"{sage}/token",
                "LEDGERBRIDGE_SAGE_ACCOUNTING_REVOKE_URL": f"{sage}/revoke",
                "LEDGERBRIDGE_SAGE_ACCOUNTING_API_URL": f"{sage}/v3.1",
            }
        )
    if intacct:
        env.update(
            {
                "LEDGERBRIDGE_SAGE_INTACCT_SENDER_ID": "sandbox-sender",
                "LEDGERBRIDGE_SAGE_INTACCT_SENDER_PASSWORD": "sandbox-sender-password",
                "LEDGERBRIDGE_SAGE_INTACCT_XML_URL": f"{intacct}/ia/xml/xmlgw.phtml",
                "LEDGERBRIDGE_SAGE_INTACCT_REST_URL": f"{intacct}/ia/api/v1",
            }
        )
    env.update(extra)
    return env


def serve_args(port: int) -> list[str]:
    return [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]


def sim_args(module: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        module,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]


def connect_sage(gateway: str, sim: str) -> tuple[str, str]:
    """A tenant and an active Sage Accounting connection, through the real OAuth flow."""
    with httpx.Client(timeout=30) as client:
        r = client.post(
            f"{gateway}/v1/admin/tenants",
            json={"name": "mp"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        r.raise_for_status()
        key = r.json()["api_key"]
        r = client.post(
            f"{gateway}/v1/connections",
            json={"provider": "sage_accounting"},
            headers={"Authorization": f"Bearer {key}"},
        )
        r.raise_for_status()
        approve = client.get(r.json()["authorization_url"])
        callback = client.get(approve.headers["location"])
        callback.raise_for_status()
        assert callback.json()["status"] == "active", callback.text
        return key, str(callback.json()["id"])


PathLike = Path
