"""The ``ledgerbridge`` command, run as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, TEST_KEYRING

CLI = [sys.executable, "-m", "api.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERBRIDGE_")}
    env.update(
        {
            "LEDGERBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "LEDGERBRIDGE_KEYRING": TEST_KEYRING,
            "LEDGERBRIDGE_ACTIVE_KEY_ID": "k1",
            **extra,
        }
    )
    return env


@contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_tenants_create_prints_the_key_once(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "tenants", "create", "acme"],
        env=_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    created = json.loads(out.stdout)
    assert created["name"] == "acme" and created["api_key"].startswith("lb_")
    assert "only once" in out.stderr
    again = subprocess.run(
        [*CLI, "db", "upgrade"], env=_env(tmp_path), cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "head" in again.stdout


def test_openapi_command_prints_the_committed_spec(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "openapi"], env=_env(tmp_path), cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout == (REPO / "openapi" / "openapi.json").read_text()


def test_production_refuses_to_start_without_a_keyring(tmp_path: Path) -> None:
    env = _env(tmp_path, LEDGERBRIDGE_ENV="production")
    del env["LEDGERBRIDGE_KEYRING"], env["LEDGERBRIDGE_ACTIVE_KEY_ID"]
    out = subprocess.run(
        [*CLI, "serve", "--port", str(free_port())],
        check=False,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "LEDGERBRIDGE_KEYRING" in out.stdout + out.stderr
    assert not (tmp_path / ".ledgerbridge").exists()


def test_serve_refuses_a_keyring_missing_a_stored_key_id(tmp_path: Path) -> None:
    subprocess.run(
        [*CLI, "tenants", "create", "acme"], env=_env(tmp_path), cwd=REPO, capture_output=True, check=True
    )
    import asyncio

    from api.connections.store import write_secrets
    from api.db import Database
    from api.vault import Keyring
    from models import Connection, Tenant

    async def seed() -> None:
        db = Database(f"sqlite:///{tmp_path / 'cli.db'}")
        async with db.session() as session:
            tenant = Tenant(name="x")
            session.add(tenant)
            await session.flush()
            conn = Connection(tenant_id=tenant.id, provider="sage_accounting", status="active", settings={})
            session.add(conn)
            await session.flush()
            await write_secrets(
                session, Keyring.from_json(TEST_KEYRING, "k1"), conn, {"refresh_token": "r"}, None
            )
        await db.dispose()

    asyncio.run(seed())
    other = '{"k2": "' + "A" * 43 + '="}'
    env = _env(tmp_path, LEDGERBRIDGE_KEYRING=other, LEDGERBRIDGE_ACTIVE_KEY_ID="k2")
    out = subprocess.run(
        [*CLI, "serve", "--port", str(free_port())],
        check=False,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "missing from the keyring" in out.stdout + out.stderr


@pytest.mark.slow
def test_serve_migrates_and_serves(tmp_path: Path) -> None:
    port = free_port()
    with running([*CLI, "serve", "--port", str(port)], _env(tmp_path), REPO) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert "ledgerbridge_requests_total" in metrics.text


@pytest.mark.slow
def test_sandbox_prints_a_key_and_a_working_curl(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path)
    del env["LEDGERBRIDGE_DATABASE_URL"]
    with running([*CLI, "sandbox", "--port", str(port)], env, tmp_path) as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        # A reader thread: the process's pipe is buffered, so select() on it can miss lines already read.
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while "".join(lines).count("curl -s") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        text = "".join(lines)
        curls = re.findall(
            r"curl -s (\S+) -H 'Authorization: Bearer (\S+)' -H 'X-Connection-Id: (\S+)'", text
        )
        assert len(curls) == 2, text
        for url, key, conn in curls:
            r = httpx.get(
                url, headers={"Authorization": f"Bearer {key}", "X-Connection-Id": conn}, timeout=30
            )
            assert r.status_code == 200, r.text
            assert r.json()["data"], r.text
