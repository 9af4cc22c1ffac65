"""SQLite connection set-up (api/db.py): a new connection opened while another holds the write lock waits
for it instead of failing with "database is locked" (the busy timeout is set before the journal mode,
which needs a lock of its own)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from api.db import sqlite_pragmas


def test_a_new_connection_waits_for_the_writer_before_setting_wal(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        # timeout=0: no busy handler but the one the listener sets.
        fresh = sqlite3.connect(path, timeout=0, isolation_level=None)
        sqlite_pragmas("foreign_keys=ON")(fresh, None)
        assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert fresh.execute("SELECT x FROM t").fetchall() == [(1,)]
        fresh.close()
    finally:
        release.join()
        writer.close()
