"""Run the simulator alone: ``python -m sandbox.sage_intacct --host 127.0.0.1 --port 9002``."""

from __future__ import annotations

import argparse

import uvicorn

from ..runtime import steady_gc
from . import SageIntacctSimulator, SimConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated Sage Intacct (XML gateway + REST API)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--public-url", help="base URL handed out as the session endpoint")
    parser.add_argument("--session-ttl", type=float, help="XML session lifetime in seconds")
    parser.add_argument("--company-concurrency", type=int, help="concurrent requests per company")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = SimConfig(public_url=args.public_url or f"http://{args.host}:{args.port}")
    if args.session_ttl is not None:
        config.session_ttl = args.session_ttl
    if args.company_concurrency is not None:
        config.company_concurrency = args.company_concurrency
    steady_gc()
    uvicorn.run(SageIntacctSimulator(config), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
