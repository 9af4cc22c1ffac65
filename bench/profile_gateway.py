"""``python -m bench.profile_gateway --port P --out FILE``: one gateway process under pyinstrument.

Serves like ``ledgerbridge serve`` (one worker, same settings from the environment) while pyinstrument
samples the event-loop thread; on SIGINT/SIGTERM it stops serving and writes the text report to ``--out``.
pyinstrument is a development tool: ``.venv/bin/pip install pyinstrument``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.0005)
    args = parser.parse_args(argv)

    import uvicorn
    from pyinstrument import Profiler

    from api import logs
    from api.app import create_app
    from api.cli import preflight
    from api.settings import Settings

    settings = Settings()
    logs.configure(settings.log_level)
    preflight(settings)  # as ``ledgerbridge serve``: migrate, then check the keyring
    config = uvicorn.Config(
        create_app(settings), host=args.host, port=args.port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    profiler = Profiler(interval=args.interval, async_mode="disabled")
    profiler.start()
    try:
        server.run()
    finally:
        session = profiler.stop()
        args.out.write_text(profiler.output_text(unicode=True, color=False, show_all=False, timeline=False))
        (args.out.with_suffix(".json")).write_text(_session_json(session))
    return 0


def _session_json(session: object) -> str:
    from pyinstrument.renderers import JSONRenderer

    rendered: str = JSONRenderer().render(session)  # type: ignore[arg-type]
    return rendered


if __name__ == "__main__":
    sys.exit(main())
