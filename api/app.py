"""The app factory and its lifespan (one shared ``httpx.AsyncClient`` for every upstream call)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select

from api import errors, transport
from api.accounting.routes import router as accounting_router
from api.cache import TtlCache, watch
from api.connections.routes import router as connections_router
from api.db import Database
from api.middleware import GatewayMiddleware
from api.ops import router as ops_router
from api.proxy.routes import router as proxy_router
from api.ratelimit import build_governor
from api.reconciler import Reconciler
from api.requestlog import RequestLogWriter
from api.requestlog import router as requestlog_router
from api.settings import Settings
from api.state import AppState
from api.tenants.routes import router as tenants_router
from api.vault import KeyringError, load_keyring
from models import Credential

log = logging.getLogger(__name__)

DESCRIPTION = """A self-hosted unified accounting API for Sage Intacct and Sage Business Cloud Accounting.

Authenticate with `Authorization: Bearer <api key>`; pick the upstream with `X-Connection-Id`.
Money is a decimal string. Errors are `application/problem+json`."""


async def verify_stored_key_ids(state: AppState) -> None:
    """Refuse to start when a stored ciphertext's key id is missing from the keyring."""
    async with state.db.sessions() as session:
        kids = set((await session.execute(select(Credential.key_id).distinct())).scalars())
    missing = kids - set(state.keyring.keys)
    if missing:
        raise KeyringError(f"stored credentials use key ids missing from the keyring: {sorted(missing)}")


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    return transport.make_http_client(settings.upstream_timeout_seconds, settings.http_transport)


def create_app(
    settings: Settings | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    mounts: dict[str, Any] | None = None,
) -> FastAPI:
    """Build the gateway. ``http`` replaces the upstream client (tests); ``mounts`` adds ASGI apps
    (the sandbox's simulated upstreams)."""
    settings = settings or Settings()
    keyring = load_keyring(
        settings.keyring.get_secret_value() if settings.keyring else None,
        settings.active_key_id,
        env=settings.env,
        dev_key_file=settings.dev_key_file,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: AppState = app.state.lb
        await verify_stored_key_ids(state)
        if governor is not None:
            await governor.start()
        state.request_log.start()
        reconciler = Reconciler(state)
        state.extras["reconciler"] = reconciler
        reconciler.start()
        try:
            yield
        finally:
            await reconciler.stop()
            await state.request_log.stop()
            if governor is not None:
                await governor.close()
            if http is None:
                await state.http.aclose()
            await state.db.dispose()

    app = FastAPI(
        title="LedgerBridge",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    db = Database(
        settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
    )
    app.state.lb = AppState(
        settings=settings,
        db=db,
        keyring=keyring,
        http=http or make_http_client(settings),
        request_log=RequestLogWriter(db),
        principals=TtlCache(settings.cache_seconds),
        connections=TtlCache(settings.cache_seconds),
    )
    watch(db.session_info, "api_keys", app.state.lb.principals)
    watch(db.session_info, "tenants", app.state.lb.principals)
    watch(db.session_info, "connections", app.state.lb.connections)
    watch(db.session_info, "tenants", app.state.lb.connections)
    governor = build_governor(settings)
    if governor is not None:
        app.state.lb.limiter = governor
    errors.install(app)
    # The unified routes first: Starlette tries routes in order, and they carry most of the traffic.
    for router in (
        accounting_router,
        ops_router,
        tenants_router,
        connections_router,
        requestlog_router,
        proxy_router,
    ):
        app.include_router(router)
    app.mount("/docs-static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static")
    for prefix, sub in (mounts or {}).items():
        app.mount(prefix, sub)
    app.add_middleware(GatewayMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A tenant API key (lb_…)"}
            }
            schema["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
