"""``python -m bench.gateway serve …``: ``ledgerbridge serve`` with the upstream transport chosen by
``LEDGERBRIDGE_HTTP_TRANSPORT`` (see :mod:`bench.transport`), until ``api.app.make_http_client`` does it,
and the candidate fixes of ``LEDGERBRIDGE_BENCH_EXPERIMENTS`` (see :mod:`bench.experiments`).

uvicorn imports :func:`factory` in every worker, so the choice holds with ``--workers`` too.
"""

from __future__ import annotations

import sys
from typing import Any


def factory() -> Any:
    from api import app as app_module
    from api.settings import Settings
    from bench import experiments
    from bench.transport import make_http_client, transport_from_env

    transport = transport_from_env()

    def make(settings: Settings) -> Any:
        return make_http_client(settings.upstream_timeout_seconds, transport)

    app_module.make_http_client = make
    chosen = experiments.selected()
    experiments.before_app(chosen)
    app = app_module.create_app()
    experiments.after_app(app, chosen)
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from api import logs, migrate
    from api.cli import build_parser
    from api.settings import Settings

    args = build_parser().parse_args(argv)
    if args.command != "serve":
        raise SystemExit("bench.gateway only serves; use `ledgerbridge` for everything else")
    settings = Settings()
    logs.configure(settings.log_level)
    migrate.upgrade(settings.database_url)
    uvicorn.run(
        "bench.gateway:factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
