"""``ledgerbridge sandbox``: the gateway with simulated Sage upstreams mounted and seeded demo data.

The simulators keep their data in memory, so the sandbox starts from a fresh SQLite database each time
(``.ledgerbridge/sandbox.db``) and connects a demo tenant to both simulated upstreams through the real
flows: the Sage Accounting OAuth redirect dance and an Intacct credential login.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from api import logs, migrate
from api.app import create_app
from api.settings import Settings

SANDBOX_DB = Path(".ledgerbridge/sandbox.db")
ADMIN_TOKEN_ENV = "LEDGERBRIDGE_ADMIN_TOKEN"


def sandbox_settings(host: str, port: int, admin_token: str) -> Settings:
    base = f"http://{host}:{port}"
    sim = f"{base}/sim"
    return Settings(
        database_url=f"sqlite:///{SANDBOX_DB}",
        public_url=base,
        admin_token=SecretStr(admin_token),
        sage_accounting_client_id="ledgerbridge-sandbox",
        sage_accounting_client_secret=SecretStr("ledgerbridge-sandbox-secret"),
        sage_accounting_authorize_url=f"{sim}/sage-accounting/oauth2/auth/central?filter=apiv3.1",
        sage_accounting_token_url=f"{sim}/sage-accounting/token",
        sage_accounting_revoke_url=f"{sim}/sage-accounting/revoke",
        sage_accounting_api_url=f"{sim}/sage-accounting/v3.1",
        sage_intacct_sender_id="sandbox-sender",
        sage_intacct_sender_password=SecretStr("sandbox-sender-password"),
        sage_intacct_xml_url=f"{sim}/sage-intacct/ia/xml/xmlgw.phtml",
        sage_intacct_rest_url=f"{sim}/sage-intacct/ia/api/v1",
    )


def simulators(host: str, port: int) -> dict[str, Any]:
    from sandbox.sage_accounting import SageAccountingSimulator
    from sandbox.sage_intacct import SageIntacctSimulator
    from sandbox.sage_intacct import SimConfig as IntacctConfig

    return {
        "/sim/sage-accounting": SageAccountingSimulator(),
        "/sim/sage-intacct": SageIntacctSimulator(
            IntacctConfig(public_url=f"http://{host}:{port}/sim/sage-intacct")
        ),
    }


async def seed(base: str, admin_token: str) -> dict[str, str]:
    """Create the demo tenant and connect it to both simulators through the real flows."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post(
            "/v1/admin/tenants", json={"name": "demo"}, headers={"Authorization": f"Bearer {admin_token}"}
        )
        r.raise_for_status()
        key = r.json()["api_key"]
        headers = {"Authorization": f"Bearer {key}"}
        r = await client.post("/v1/connections", json={"provider": "sage_accounting"}, headers=headers)
        r.raise_for_status()
        sage_id = r.json()["id"]
        approve = await client.get(r.json()["authorization_url"])
        callback = await client.get(approve.headers["location"])
        callback.raise_for_status()
        r = await client.post(
            "/v1/connections",
            json={
                "provider": "sage_intacct",
                "credentials": {
                    "company_id": "DEMO-CO",
                    "user_id": "demo-user",
                    "user_password": "demo-password",
                },
            },
            headers=headers,
        )
        r.raise_for_status()
        return {"api_key": key, "sage_accounting": sage_id, "sage_intacct": r.json()["id"]}


def banner(base: str, seeded: dict[str, str]) -> str:
    key = seeded["api_key"]
    return f"""
LedgerBridge sandbox is running at {base}  (Swagger UI: {base}/docs)
Simulated upstreams: {base}/sim/sage-accounting  {base}/sim/sage-intacct

  demo API key (shown once):        {key}
  Sage Accounting connection id:    {seeded["sage_accounting"]}
  Sage Intacct connection id:       {seeded["sage_intacct"]}

Try:
  curl -s {base}/v1/contacts -H 'Authorization: Bearer {key}' -H 'X-Connection-Id: {seeded["sage_accounting"]}'
  curl -s {base}/v1/contacts -H 'Authorization: Bearer {key}' -H 'X-Connection-Id: {seeded["sage_intacct"]}'
"""


def run_sandbox(host: str = "127.0.0.1", port: int = 8000) -> int:
    logs.configure("WARNING")
    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or os.urandom(16).hex()
    SANDBOX_DB.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{SANDBOX_DB}{suffix}").unlink(missing_ok=True)
    settings = sandbox_settings(host, port, admin_token)
    migrate.upgrade(settings.database_url)
    app = create_app(settings, mounts=simulators(host, port))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.05)
        base = f"http://{host}:{port}"
        try:
            seeded = await seed(base, admin_token)
        except Exception as exc:
            print(f"sandbox seeding failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            server.should_exit = True
            await serving
            raise SystemExit(1) from None
        print(banner(base, seeded), flush=True)
        await serving

    asyncio.run(main())
    return 0
