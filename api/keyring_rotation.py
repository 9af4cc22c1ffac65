"""``ledgerbridge keyring rotate``: re-encrypt every secret under the active key, in batches.

Each row is rewritten with a compare-and-swap on its old ciphertext, one short transaction per batch, so
the gateway keeps serving (and refreshing tokens) during a rotation; a rotation that stops half-way is
resumed by running it again, and running it twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from api.db import Database
from api.vault import Keyring
from models import Credential, OAuthState


@dataclass
class RotationReport:
    rotated: int = 0
    skipped: int = 0
    remaining: int = 0


async def rotate(
    db: Database, keyring: Keyring, *, batch_size: int = 100, max_batches: int | None = None
) -> RotationReport:
    report = RotationReport()
    active_prefix = f"v1.{keyring.active}."
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        async with db.session() as session:
            rows = list(
                (
                    await session.execute(
                        select(Credential)
                        .where(Credential.key_id != keyring.active)
                        .order_by(Credential.id)
                        .limit(batch_size)
                    )
                ).scalars()
            )
            if not rows:
                break
            for row in rows:
                plain = keyring.decrypt(
                    row.ciphertext, tenant_id=row.tenant_id, connection_id=row.connection_id, field=row.field
                )
                fresh = keyring.encrypt(
                    plain, tenant_id=row.tenant_id, connection_id=row.connection_id, field=row.field
                )
                result = await session.execute(
                    update(Credential)
                    .where(Credential.id == row.id, Credential.ciphertext == row.ciphertext)
                    .values(ciphertext=fresh, key_id=keyring.active)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    report.rotated += 1
                else:
                    report.skipped += 1
    async with db.session() as session:
        states = list((await session.execute(select(OAuthState))).scalars())
        for state in states:
            if state.code_verifier.startswith(active_prefix):
                continue
            plain = keyring.decrypt(
                state.code_verifier,
                tenant_id=state.tenant_id,
                connection_id=state.connection_id,
                field="pkce_verifier",
            )
            state.code_verifier = keyring.encrypt(
                plain, tenant_id=state.tenant_id, connection_id=state.connection_id, field="pkce_verifier"
            )
            report.rotated += 1
    async with db.sessions() as session:
        report.remaining = len(
            list(
                (
                    await session.execute(select(Credential.id).where(Credential.key_id != keyring.active))
                ).scalars()
            )
        )
    return report
