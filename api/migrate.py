"""Running Alembic from the gateway (``serve``, ``sandbox`` and ``db upgrade`` upgrade to head first)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from api.db import sync_url
from migrations import HERE


def alembic_config(database_url: str) -> Config:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    config.set_main_option(
        "sqlalchemy.url", sync_url(database_url).render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
