"""Shared fixtures: real databases (SQLite always, PostgreSQL when LEDGERBRIDGE_TEST_POSTGRES_URL is set),
the simulated upstreams, and a gateway wired to them over in-process ASGI transports."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.routing import Mount

from api import migrate
from api.app import create_app
from api.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
POSTGRES_URL = os.environ.get("LEDGERBRIDGE_TEST_POSTGRES_URL")

TEST_KEY = base64.b64encode(b"k" * 32).decode()
TEST_KEYRING = f'{{"k1": "{TEST_KEY}"}}'
ADMIN_TOKEN = "test-admin-token"
UPSTREAM = "http://upstream"
GATEWAY = "http://gateway"


def _admin_url(url: str) -> Any:
    return make_url(url).set(drivername="postgresql+psycopg")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A migrated template database; each test clones it (fast) and drops its clone."""
    if not POSTGRES_URL:
        yield None
        return
    admin = create_engine(_admin_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"lbt_tpl_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = _admin_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_template: str | None) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
        migrate.upgrade(url)
        yield url
        return
    if not POSTGRES_URL or pg_template is None:
        pytest.skip("LEDGERBRIDGE_TEST_POSTGRES_URL is not set (CI sets it)")
    admin = create_engine(_admin_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"lbt_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _admin_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Sims:
    sage: Any
    intacct: Any
    app: Starlette


@pytest.fixture
def sims() -> Sims:
    from sandbox.sage_accounting import SageAccountingSimulator

    sage = SageAccountingSimulator()
    routes = [Mount("/sage-accounting", app=sage)]
    intacct: Any = None
    try:
        from sandbox.sage_intacct import SageIntacctSimulator
        from sandbox.sage_intacct import SimConfig as IntacctConfig
    except ImportError:
        pass
    else:
        intacct = SageIntacctSimulator(IntacctConfig(public_url=f"{UPSTREAM}/sage-intacct"))
        routes.append(Mount("/sage-intacct", app=intacct))
    app = Starlette(routes=routes)
    return Sims(sage, intacct, app)


def gateway_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "keyring": SecretStr(TEST_KEYRING),
        "active_key_id": "k1",
        "admin_token": SecretStr(ADMIN_TOKEN),
        "public_url": GATEWAY,
        "sage_accounting_client_id": "ledgerbridge-sandbox",
        "sage_accounting_client_secret": SecretStr("ledgerbridge-sandbox-secret"),
        "sage_accounting_authorize_url": f"{UPSTREAM}/sage-accounting/oauth2/auth/central?filter=apiv3.1",
        "sage_accounting_token_url": f"{UPSTREAM}/sage-accounting/token",
        "sage_accounting_revoke_url": f"{UPSTREAM}/sage-accounting/revoke",
        "sage_accounting_api_url": f"{UPSTREAM}/sage-accounting/v3.1",
        "sage_intacct_sender_id": "sandbox-sender",
        "sage_intacct_sender_password": SecretStr("sandbox-sender-password"),
        "sage_intacct_xml_url": f"{UPSTREAM}/sage-intacct/ia/xml/xmlgw.phtml",
        "sage_intacct_rest_url": f"{UPSTREAM}/sage-intacct/ia/api/v1",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Gateway:
    client: httpx.AsyncClient
    upstream: httpx.AsyncClient
    app: Any
    sims: Sims
    settings: Settings

    async def tenant(self, name: str = "acme") -> str:
        r = await self.client.post(
            "/v1/admin/tenants", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert r.status_code == 201, r.text
        key: str = r.json()["api_key"]
        return key

    async def sage_connection(self, key: str, *, user: str | None = None) -> dict[str, Any]:
        """Run the real OAuth flow against the simulator; returns the connection after the callback."""
        r = await self.client.post(
            "/v1/connections",
            json={"provider": "sage_accounting"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 201, r.text
        url = r.json()["authorization_url"]
        if user:
            url += f"&sim_user={user}"
        approve = await self.upstream.get(url)
        assert approve.status_code == 302, approve.text
        location = approve.headers["location"]
        assert location.startswith(GATEWAY)
        callback = await self.client.get(location[len(GATEWAY) :])
        assert callback.status_code == 200, callback.text
        body: dict[str, Any] = callback.json()
        return body

    async def intacct_connection(self, key: str, **credentials: Any) -> dict[str, Any]:
        creds = {
            "company_id": "DEMO-CO",
            "user_id": "demo-user",
            "user_password": "demo-password",
            **credentials,
        }
        r = await self.client.post(
            "/v1/connections",
            json={"provider": "sage_intacct", "credentials": creds},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def flush_log(self) -> None:
        await self.app.state.lb.request_log.flush()


@pytest.fixture
async def gateway(database_url: str, sims: Sims) -> AsyncIterator[Gateway]:
    upstream = httpx.AsyncClient(transport=httpx.ASGITransport(app=sims.app), base_url=UPSTREAM)
    settings = gateway_settings(database_url)
    app = create_app(settings, http=upstream)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY)
        async with client:
            yield Gateway(client, upstream, app, sims, settings)
    await upstream.aclose()


def auth(key: str, connection_id: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", **extra}
    if connection_id:
        headers["X-Connection-Id"] = connection_id
    return headers
