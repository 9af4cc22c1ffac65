"""Process settings for a simulator running on its own (``python -m sandbox.…``).

A simulator keeps every record it was sent in memory. CPython's full collections walk every tracked
object, so with tens of thousands of stored journals each full collection paused the simulator for
tens of milliseconds, longer the more it held (14 ms after 1,200 posts, 106 ms after 27,000): a latency
the real service does not have, which showed in the benchmarks as the *direct* baseline's p99. After each
full collection, :func:`steady_gc` moves the survivors to the permanent generation, so the next one walks
only what is new. What survives a full collection in a simulator is almost all store; the cost is that
garbage cycles among frozen objects are never reclaimed, acceptable for a test double.

Only the simulators' own ``__main__`` call it: in-process apps (tests, ``ledgerbridge sandbox``) keep the
host process's collector as it is.
"""

from __future__ import annotations

import gc
from typing import Any


def _freeze_after_full_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def steady_gc() -> None:
    """Freeze start-up objects now and survivors after every full collection (idempotent)."""
    gc.collect()
    gc.freeze()
    if _freeze_after_full_collection not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full_collection)
