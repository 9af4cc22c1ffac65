"""The ``ledgerbridge`` command: serve, sandbox, db upgrade, tenants create, keyring rotate, openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from api import logs
from api.settings import Settings
from api.vault import KeyringError


def _factory() -> object:
    from api.app import create_app
    from api.runtime import tune_gc

    app = create_app()
    tune_gc()
    return app


def preflight(settings: Settings) -> None:
    """Migrate, then check the keyring against the stored key ids, before any worker starts."""
    from sqlalchemy import create_engine, select

    from api import migrate
    from api.db import sync_url
    from api.vault import load_keyring
    from models import Credential

    keyring = load_keyring(
        settings.keyring.get_secret_value() if settings.keyring else None,
        settings.active_key_id,
        env=settings.env,
        dev_key_file=settings.dev_key_file,
    )
    migrate.upgrade(settings.database_url)
    engine = create_engine(sync_url(settings.database_url))
    try:
        with engine.connect() as conn:
            kids = set(conn.execute(select(Credential.key_id).distinct()).scalars())
    finally:
        engine.dispose()
    missing = kids - set(keyring.keys)
    if missing:
        raise KeyringError(f"stored credentials use key ids missing from the keyring: {sorted(missing)}")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    logs.configure(settings.log_level)
    try:
        preflight(settings)
    except KeyringError as exc:
        print(f"ledgerbridge: refusing to start: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        "api.cli:_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
    )
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from api.sandbox import run_sandbox

    return run_sandbox(host=args.host, port=args.port)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from api import migrate

    migrate.upgrade(Settings().database_url, args.revision)
    print(f"database at {args.revision}")
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from api import migrate
    from api.db import Database
    from api.tenants.service import create_tenant

    settings = Settings()
    migrate.upgrade(settings.database_url)

    async def run() -> tuple[str, str]:
        db = Database(settings.database_url)
        try:
            async with db.session() as session:
                tenant, key = await create_tenant(session, args.name)
                return tenant.id, key
        finally:
            await db.dispose()

    tenant_id, key = asyncio.run(run())
    print(json.dumps({"id": tenant_id, "name": args.name, "api_key": key}))
    print("The API key is shown only once: store it now.", file=sys.stderr)
    return 0


def cmd_keyring_rotate(args: argparse.Namespace) -> int:
    from api import migrate
    from api.db import Database
    from api.keyring_rotation import rotate
    from api.vault import load_keyring

    settings = Settings()
    migrate.upgrade(settings.database_url)
    keyring = load_keyring(
        settings.keyring.get_secret_value() if settings.keyring else None,
        settings.active_key_id,
        env=settings.env,
        dev_key_file=settings.dev_key_file,
    )

    async def run() -> int:
        db = Database(settings.database_url)
        try:
            report = await rotate(db, keyring, batch_size=args.batch_size)
        finally:
            await db.dispose()
        print(
            json.dumps(
                {
                    "rotated": report.rotated,
                    "skipped": report.skipped,
                    "remaining": report.remaining,
                    "active_key_id": keyring.active,
                }
            )
        )
        return 0 if report.remaining == 0 else 1

    return asyncio.run(run())


def cmd_openapi(args: argparse.Namespace) -> int:
    from api.openapi_spec import spec_json

    sys.stdout.write(spec_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledgerbridge", description="LedgerBridge unified accounting API")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (upgrades the database first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    sandbox = sub.add_parser("sandbox", help="run the gateway with simulated Sage upstreams and demo data")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8000)
    sandbox.set_defaults(func=cmd_sandbox)

    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate the database")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=cmd_db_upgrade)

    tenants = sub.add_parser("tenants", help="tenant commands")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    create = tenants_sub.add_parser("create", help="create a tenant and print its first API key once")
    create.add_argument("name")
    create.set_defaults(func=cmd_tenants_create)

    keyring = sub.add_parser("keyring", help="credential keyring commands")
    keyring_sub = keyring.add_subparsers(dest="keyring_command", required=True)
    rotate = keyring_sub.add_parser("rotate", help="re-encrypt every secret under the active key")
    rotate.add_argument("--batch-size", type=int, default=100)
    rotate.set_defaults(func=cmd_keyring_rotate)

    openapi = sub.add_parser("openapi", help="print the OpenAPI spec")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
