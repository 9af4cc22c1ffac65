"""``python -m bench.reference_proxy --port P --upstream URL``: the floor the throughput scenario compares with.

A one-route FastAPI app that forwards ``GET /{path}`` (path, query string, ``Authorization`` and
``X-Business``) to ``URL`` with the gateway's own upstream client (``api.transport.make_http_client`` on
aiohttp), and answers the upstream's body, status and content type unchanged. No authentication, rate
budgets, request log, mapping or JSON re-rendering: what a minimal Python proxy achieves on this machine, not
a product. ``GET /_ready`` answers 200 without calling upstream (the stack's readiness probe).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response

from api.transport import make_http_client

FORWARDED_HEADERS = ("authorization", "x-business")


def create_app(upstream: str) -> FastAPI:
    base = upstream.rstrip("/")
    clients: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        client = make_http_client(30.0, "aiohttp")
        clients.append(client)
        try:
            yield
        finally:
            clients.clear()
            await client.aclose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/_ready")
    async def ready() -> Response:
        return Response(status_code=200)

    @app.get("/{path:path}")
    async def forward(path: str, request: Request) -> Response:
        url = f"{base}/{path}"
        if request.url.query:
            url += f"?{request.url.query}"
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        upstream_response = await clients[0].get(url, headers=headers)
        return Response(
            content=upstream_response.content,
            status_code=upstream_response.status_code,
            media_type=upstream_response.headers.get("content-type"),
        )

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL requests are forwarded to")
    args = parser.parse_args(argv)

    import uvicorn

    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
