from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select, update

from api.logs import JsonFormatter
from models import Credential
from tests.conftest import Gateway, auth


@contextmanager
def _json_lines(name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through JsonFormatter into a string, for the duration of the block."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_json_logs_redact_secrets() -> None:
    with _json_lines("ledgerbridge.test") as (logger, stream):
        logger.info(
            "calling upstream with Bearer eyJsecret.token and key lb_abcdefghijklmnopqrstuvwxyz123456",
            extra={"refresh_token": "rt-secret", "client_secret": "cs-secret", "status": 200},
        )
    line = json.loads(stream.getvalue())
    text = stream.getvalue()
    for secret in ("eyJsecret.token", "lb_abcdefghijklmnopqrstuvwxyz123456", "rt-secret", "cs-secret"):
        assert secret not in text
    assert line["status"] == 200 and line["level"] == "INFO"


async def test_tampered_ciphertext_is_a_clear_problem_and_changes_nothing(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = await gateway.sage_connection(key)
    gateway.app.state.lb.secret_cache.forget(conn["id"])
    async with gateway.app.state.lb.db.session() as session:
        row = (
            await session.execute(select(Credential).where(Credential.field == "access_token"))
        ).scalar_one()
        tampered = row.ciphertext[:-3] + ("AAA" if not row.ciphertext.endswith("AAA") else "BBB")
        await session.execute(update(Credential).where(Credential.id == row.id).values(ciphertext=tampered))
        await session.execute(
            update(Credential).where(Credential.connection_id == conn["id"]).values(updated_at=row.updated_at)
        )
    calls = sum(gateway.sims.sage.faults.calls.values())
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn["id"]))
    assert r.status_code == 409 and r.json()["code"] == "credentials_unreadable"
    assert sum(gateway.sims.sage.faults.calls.values()) == calls
    async with gateway.app.state.lb.db.sessions() as session:
        again = (await session.execute(select(Credential).where(Credential.id == row.id))).scalar_one()
    assert again.ciphertext == tampered


def test_json_log_lines_stay_json_for_any_extra_value() -> None:
    with _json_lines("ledgerbridge.test.values") as (logger, stream):
        logger.info("big", extra={"count": 2**70, "nested": {1: "one"}, "when": object()})
        logger.info("plain Bearer abc.def", extra={"session_id": "s-1", "status": 201})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["count"] == 2**70 and first["message"] == "big"
    assert second["session_id"] == "[redacted]" and second["status"] == 201
    assert "abc.def" not in second["message"]
    assert first["time"][:4].isdigit() and "T" in first["time"]


def test_serving_processes_freeze_the_start_up_heap_for_the_collector() -> None:
    import gc

    from api.runtime import GC_THRESHOLD, tune_gc

    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
