"""Liveness, readiness, metrics and the self-hosted Swagger UI."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text

from api.deps import app_state
from api.metrics import REGISTRY
from models import Credential

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Database unreachable or keyring invalid"}})
async def readyz(request: Request) -> Response:
    """Readiness: the database answers and every stored key id is in the keyring."""
    state = app_state(request)
    checks: dict[str, str] = {}
    try:
        async with state.db.sessions() as session:
            await session.execute(text("SELECT 1"))
            kids = set((await session.execute(select(Credential.key_id).distinct())).scalars())
        checks["database"] = "ok"
        missing = kids - set(state.keyring.keys)
        checks["keyring"] = "ok" if not missing else f"missing key ids: {sorted(missing)}"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values()) and "keyring" in checks
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="LedgerBridge API",
        swagger_js_url="/docs-static/swagger-ui-bundle.js",
        swagger_css_url="/docs-static/swagger-ui.css",
        swagger_favicon_url="/docs-static/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )
