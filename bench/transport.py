"""The transport switch, as the gateway has it (``api/transport.py``), plus reading it from the environment."""

from __future__ import annotations

import os

from api.transport import TRANSPORTS, AiohttpTransport, HttpTransport, make_http_client

__all__ = ["TRANSPORTS", "AiohttpTransport", "HttpTransport", "make_http_client", "transport_from_env"]


def transport_from_env() -> HttpTransport:
    value = os.environ.get("LEDGERBRIDGE_HTTP_TRANSPORT", "httpx").strip().lower() or "httpx"
    if value == "httpx":
        return "httpx"
    if value == "aiohttp":
        return "aiohttp"
    raise ValueError(f"LEDGERBRIDGE_HTTP_TRANSPORT must be one of {', '.join(TRANSPORTS)}, not {value!r}")
