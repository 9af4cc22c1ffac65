"""Candidate hot-path fixes, applied to a gateway process from outside ``api/`` so their effect can be
measured before anyone changes the product (``LEDGERBRIDGE_BENCH_EXPERIMENTS=a,b`` on ``bench.gateway``).

Each is the smallest faithful stand-in for a proposed change in ``api/`` (see docs/benchmarks.md):

* ``async-deps`` — ``deps.repository`` and ``accounting.routes.list_query`` as ``async def``: FastAPI runs a
  plain ``def`` dependency in the thread pool, two thread hops per list call for no blocking work;
* ``json-direct`` — render with ``model_dump_json()`` (pydantic-core writes the bytes) instead of
  ``model_dump(mode="json")`` then ``json.dumps`` in ``JSONResponse``;
* ``auth-cache`` — API key → principal cached in-process for a few seconds;
* ``conn-cache`` — the connection row cached in-process for a few seconds;
* ``no-limiter`` — no rate governor at all: the upper bound of what cheaper rate budgets can win (not a fix).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from api import context, deps
from api.accounting import routes
from connectors.base import ListQuery
from models import Connection

EXPERIMENTS = ("async-deps", "json-direct", "auth-cache", "conn-cache", "no-limiter")
TTL = 5.0


def selected() -> list[str]:
    raw = os.environ.get("LEDGERBRIDGE_BENCH_EXPERIMENTS", "")
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; known: {', '.join(EXPERIMENTS)}")
    return names


def before_app(names: list[str]) -> None:
    """Experiments that must act before ``create_app`` runs."""
    if "no-limiter" in names:
        from api import app as app_module

        app_module.build_governor = lambda settings: None  # type: ignore[attr-defined]
    if "json-direct" in names:

        def render(model: Any, include_raw: bool, status: int = 200) -> Response:
            body = model.model_dump_json(exclude=None if include_raw else {"raw"})
            return Response(body, status_code=status, media_type="application/json")

        def render_page(page: Any, include_raw: bool) -> Response:
            exclude: Any = None if include_raw else {"data": {"__all__": {"raw"}}}
            return Response(page.model_dump_json(exclude=exclude), media_type="application/json")

        routes._render = render
        routes._render_page = render_page


def _swap(app: FastAPI, old: Any, new: Any) -> None:
    """Point every dependency on ``old`` at ``new`` (same signature). Not ``app.dependency_overrides``:
    FastAPI rebuilds an overridden dependency's signature model on every request, which would cost more
    than the experiment saves."""
    seen: set[int] = set()

    def walk(dependant: Any) -> None:
        if id(dependant) in seen:
            return
        seen.add(id(dependant))
        if dependant.call is old:
            dependant.call = new
        for sub in dependant.dependencies:
            walk(sub)

    for route in app.routes:
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            walk(dependant)


def after_app(app: FastAPI, names: list[str]) -> None:
    if "async-deps" in names:

        async def list_query(
            page_size: int = Query(50, ge=1, le=200),
            cursor: str | None = Query(None, max_length=4096),
            updated_since: dt.datetime | None = Query(None),
            include_raw: bool = Query(False),
        ) -> ListQuery:
            return await routes.list_query(page_size, cursor, updated_since, include_raw)

        _swap(app, routes.list_query, list_query)

    principals: dict[str, tuple[float, deps.Principal]] = {}
    if "auth-cache" in names:

        async def principal(request: Request, session: deps.Session) -> deps.Principal:
            header = request.headers.get("authorization", "")
            hit = principals.get(header)
            if hit is None or time.monotonic() - hit[0] > TTL:
                hit = (time.monotonic(), await deps.principal(request, session))
                principals[header] = hit
            ctx = context.current()
            if ctx is not None:
                ctx.tenant_id = hit[1].tenant_id
            return hit[1]

        _swap(app, deps.principal, principal)

    rows: dict[tuple[str, str | None], tuple[float, Connection]] = {}

    class CachedRepository(deps.TenantRepository):
        async def connection(self, connection_id: str | None, *, for_update: bool = False) -> Connection:
            key = (self.tenant_id, connection_id)
            hit = rows.get(key)
            if for_update or hit is None or time.monotonic() - hit[0] > TTL:
                hit = (time.monotonic(), await super().connection(connection_id, for_update=for_update))
                rows[key] = hit
            ctx = context.current()
            if ctx is not None:
                ctx.connection_id = hit[1].id
            return hit[1]

    if "conn-cache" in names or "async-deps" in names:
        cls = CachedRepository if "conn-cache" in names else deps.TenantRepository

        async def repository(caller: deps.Caller, session: deps.Session) -> deps.TenantRepository:
            return cls(session, caller.tenant_id)

        _swap(app, deps.repository, repository)
