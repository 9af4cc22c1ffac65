"""Tenants and their API keys."""

from __future__ import annotations

import secrets

from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import hash_api_key
from models import ApiKey, Tenant


def new_api_key() -> str:
    return "lb_" + secrets.token_urlsafe(32)


async def create_api_key(session: AsyncSession, tenant_id: str, name: str = "") -> tuple[ApiKey, str]:
    key = new_api_key()
    row = ApiKey(tenant_id=tenant_id, name=name, prefix=key[:10], key_hash=hash_api_key(key))
    session.add(row)
    await session.flush()
    return row, key


async def create_tenant(session: AsyncSession, name: str) -> tuple[Tenant, str]:
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    _, key = await create_api_key(session, tenant.id, "default")
    return tenant, key
