"""Run the simulator on its own port: ``python -m sandbox.sage_accounting --host 127.0.0.1 --port 9001``."""

from __future__ import annotations

import argparse

import uvicorn

from ..runtime import steady_gc
from .app import SageAccountingSimulator
from .config import SimConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.sage_accounting", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--access-token-ttl", type=int, default=300, help="seconds (expires_in)")
    parser.add_argument("--seed", type=int, default=None, help="fix generated ids for reproducible runs")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    sim = SageAccountingSimulator(SimConfig(access_token_ttl=args.access_token_ttl, seed=args.seed))
    steady_gc()
    uvicorn.run(sim, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
