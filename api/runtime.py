"""Process-level tuning of a serving gateway process (``ledgerbridge serve``), not of tests or tools."""

from __future__ import annotations

import gc

GC_THRESHOLD = (10_000, 10, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
