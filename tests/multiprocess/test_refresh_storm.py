"""100 concurrent unified calls across 4 gateway processes sharing PostgreSQL, at the moment the access
token expires: exactly one refresh upstream and zero failures (reliability-notes.md §3.5)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from sqlalchemy import create_engine, update

from api.db import sync_url
from models import Connection
from tests.conftest import POSTGRES_URL
from tests.multiprocess.harness import (
    connect_sage,
    free_port,
    gateway_env,
    postgres_database,
    processes,
    serve_args,
    sim_args,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.skipif(not POSTGRES_URL, reason="LEDGERBRIDGE_TEST_POSTGRES_URL is not set (CI sets it)")
def test_one_refresh_across_four_replicas() -> None:
    assert POSTGRES_URL
    with postgres_database(POSTGRES_URL) as db_url, processes() as procs:
        sim_port = free_port()
        sim = f"http://127.0.0.1:{sim_port}"
        procs.start(sim_args("sandbox.sage_accounting", sim_port), {}, f"{sim}/_sim/counters")
        ports = [free_port() for _ in range(4)]
        # Behind a load balancer every replica has the same public URL; here it is the first replica.
        env = gateway_env(db_url, sage=sim, LEDGERBRIDGE_PUBLIC_URL=f"http://127.0.0.1:{ports[0]}")
        for port in ports:
            procs.start(serve_args(port), env, f"http://127.0.0.1:{port}/healthz")
        key, conn_id = connect_sage(f"http://127.0.0.1:{ports[0]}", sim)

        # The moment of expiry: the stored token is past its time and the upstream no longer accepts it.
        engine = create_engine(sync_url(db_url))
        with engine.begin() as c:
            c.execute(
                update(Connection).values(
                    credentials_expire_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
                )
            )
        engine.dispose()
        httpx.post(f"{sim}/_sim/expire-tokens").raise_for_status()
        httpx.delete(f"{sim}/_sim/counters").raise_for_status()

        async def storm() -> list[httpx.Response]:
            headers = {"Authorization": f"Bearer {key}", "X-Connection-Id": conn_id}
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
                return await asyncio.gather(
                    *(
                        client.get(
                            f"http://127.0.0.1:{ports[i % 4]}/v1/contacts",
                            params={"page_size": 5},
                            headers=headers,
                        )
                        for i in range(100)
                    )
                )

        responses = asyncio.run(storm())
        failures = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        assert failures == []
        counters = httpx.get(f"{sim}/_sim/counters").json()["calls"]
        assert counters.get("POST /token grant_type=refresh_token", 0) == 1, counters
        assert counters.get("POST /token", 0) == 1, counters
