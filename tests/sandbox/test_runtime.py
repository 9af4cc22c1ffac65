"""``sandbox.runtime.steady_gc``: a simulator's full collections walk only what is new since the last one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, json
    from sandbox.runtime import steady_gc

    steady_gc()
    steady_gc()  # idempotent: one callback
    callbacks = sum(1 for cb in gc.callbacks if cb.__name__ == "_freeze_after_full_collection")
    frozen_at_start = gc.get_freeze_count()
    store = [{"id": i, "lines": [{"debit": "10.00"}]} for i in range(50_000)]  # what a simulator keeps
    gc.collect(2)  # a full collection: the survivors are frozen after it
    frozen_after = gc.get_freeze_count()
    left_in_oldest = len(gc.get_objects(2))
    print(json.dumps({"callbacks": callbacks, "start": frozen_at_start, "after": frozen_after,
                      "oldest": left_in_oldest, "kept": len(store)}))
    """
)


def test_survivors_of_a_full_collection_are_frozen() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(out.stdout)
    assert result["callbacks"] == 1
    assert result["start"] > 0  # start-up objects frozen at once
    # every tracked store object (a record's dict and its list of lines; a dict of plain values is not
    # tracked by the collector) moved to the permanent generation
    assert result["after"] - result["start"] >= 2 * 50_000
    assert result["oldest"] < 1_000  # the next full collection walks almost nothing
