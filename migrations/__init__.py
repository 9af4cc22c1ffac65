"""Alembic migrations: every schema change is a migration."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
