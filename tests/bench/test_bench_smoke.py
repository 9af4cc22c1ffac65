"""Smoke mode of every benchmark scenario (issue #8), so the benchmarks cannot rot.

No timing is asserted: these run the real stack (both simulators and ``ledgerbridge serve`` as processes on
loopback) for a few iterations with an httpx loop instead of wrk, and assert what a benchmark reader relies
on — every call answered, the upstream call counts, one refresh per storm, the table rendered.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.report import update_doc
from bench.scenarios import SCENARIOS, Run, Section
from bench.stack import REPO, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    stack = Stack(tmp_path_factory.mktemp("bench"))
    try:
        stack.start_simulators()
        yield Run(stack, smoke=True, connections=4, invoices=250, storm=20, use_wrk=False)
    finally:
        stack.close()


def _no_errors(section: Section, column: str = "errors") -> None:
    index = section.header.index(column)
    assert all(row[index] in ("0", "–") for row in section.rows), section.markdown()


def test_overhead_measures_both_calls_direct_and_through_the_gateway(bench_run: Run) -> None:
    section = SCENARIOS["overhead"](bench_run)
    assert [row[0] for row in section.rows] == [
        "GET /v1/contacts (50)",
        "POST /v1/journals",
        "POST /v1/journals + Idempotency-Key",
    ]
    _no_errors(section)
    for call in section.data.values():
        assert call["direct"]["requests"] > 0 and call["gateway"]["requests"] > 0


@pytest.mark.parametrize("tool", ["httpx", "wrk"])
def test_keyed_journal_posts_are_new_writes_not_replays(bench_run: Run, tool: str) -> None:
    from bench.load import run_wrk, wrk_path
    from bench.scenarios import keyed_journal_targets

    if tool == "wrk" and wrk_path() is None:
        pytest.skip("wrk is not installed (the bench's smoke mode uses the httpx loop)")
    bench_run.ensure_connections()
    _, keyed = keyed_journal_targets(bench_run)
    stack = bench_run.stack
    stack.reset_counters("sage")
    if tool == "wrk":
        result = run_wrk(keyed, connections=2, duration=1, threads=2)
    else:
        result = bench_run.load(keyed, 2)
    assert result.errors == 0 and result.requests > 0
    # every call reached Sage (a repeated key would have been answered from the stored response); wrk may
    # stop with a call per connection sent but not counted
    posted = stack.counters("sage").get("POST /v3.1/journals", 0)
    assert result.requests <= posted <= result.requests + (2 if tool == "wrk" else 0), (posted, result)


def test_throughput_runs_one_and_two_workers_beside_the_reference_proxy(bench_run: Run) -> None:
    section = SCENARIOS["throughput"](bench_run)
    assert [row[1] for row in section.rows] == ["–", "1", "1", "2"]
    assert section.rows[1][0] == "minimal FastAPI proxy (reference, not the product)"
    _no_errors(section)
    assert section.data["workers_2"]["peak_rss_mib"] > section.data["workers_1"]["peak_process_mib"] > 0
    reference = section.data["reference"]
    assert reference["errors"] == 0 and reference["requests"] == section.data["direct"]["requests"] > 0
    assert not any(proc.name == "reference-proxy" for proc in bench_run.stack.procs)  # stopped after its row


def test_cost_measures_pages_of_1_and_50_on_all_three_servers(bench_run: Run) -> None:
    section = SCENARIOS["cost"](bench_run)
    _no_errors(section)
    for name in ("direct", "reference", "gateway"):
        for size in ("page_1", "page_50"):
            assert section.data[name][size]["requests"] > 0, section.markdown()
    assert section.data["one_worker_budget_ms"] > 0


def test_upstream_efficiency_lists_every_invoice_with_the_minimum_of_upstream_calls(bench_run: Run) -> None:
    section = SCENARIOS["efficiency"](bench_run)
    sage = section.data["sage"]
    assert sage["unique"] == sage["listed"] >= bench_run.invoices
    assert sage["without_lines"] == 0
    assert all(section.checks.values()), section.markdown()


def test_memory_reports_peaks_of_the_serve_process(bench_run: Run) -> None:
    section = SCENARIOS["memory"](bench_run)
    labels = [row[0] for row in section.rows]
    assert "throughput, 1 worker" in labels and "paging every Sage invoice" in labels
    assert all(float(row[2]) > 0 for row in section.rows)


def test_refresh_storm_refreshes_exactly_once(bench_run: Run) -> None:
    section = SCENARIOS["storm"](bench_run)
    assert section.data["refreshes"] == 1, section.markdown()
    assert section.checks["every call answered 200"], section.markdown()


def test_transport_comparison_serves_through_both_transports(bench_run: Run) -> None:
    section = SCENARIOS["transport"](bench_run)
    for name in ("httpx", "aiohttp"):
        assert section.data[name]["throughput"]["errors"] == 0, section.markdown()
        assert section.data[name]["sequential"]["requests"] > 0


@pytest.mark.skipif(importlib.util.find_spec("pyinstrument") is None, reason="pyinstrument is not installed")
def test_profile_attributes_samples_to_the_gateway_hot_path(bench_run: Run) -> None:
    section = SCENARIOS["profile"](bench_run)
    assert section.data["load"]["errors"] == 0
    assert "gateway code (api/)" in section.data["categories"]


def test_update_doc_replaces_generated_blocks_and_keeps_prose() -> None:
    text = "# Benchmarks\n\nProse.\n\n<!-- bench:overhead -->\nold\n<!-- /bench:overhead -->\n\nMore prose.\n"
    updated = update_doc(text, {"overhead": "new table", "storm": "storm table"})
    assert "old" not in updated and "new table" in updated
    assert updated.index("Prose.") < updated.index("new table") < updated.index("More prose.")
    assert updated.rstrip().endswith("<!-- /bench:storm -->")


def test_bench_without_wrk_explains_how_to_install_it(tmp_path: Path) -> None:
    python_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": str(python_dir)}  # a PATH on which there is no wrk
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "overhead", "--no-install", "--no-doc"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if (python_dir / "wrk").exists():
        pytest.skip("wrk lives beside the interpreter")
    assert out.returncode == 2
    assert "apt-get install -y wrk" in out.stderr and "--smoke" in out.stderr


def test_fixes_measures_the_baseline_and_this_tree_without_errors(bench_run: Run) -> None:
    section = SCENARIOS["fixes"](bench_run)
    if "skipped" in section.data:
        pytest.skip(f"the baseline revision is unavailable: {section.data['skipped']}")
    assert [row[0] for row in section.rows] == [f"before (`{bench_run.baseline}`)", "after (this tree)"]
    for side in ("before", "after"):
        entry = section.data[side]
        assert entry["errors"] == 0 and entry["requests"] > 0, section.markdown()
        assert entry["rps"] > 0 and entry["cpu_ms_throughput"] > 0, section.markdown()
    _no_errors(section)
    # the worktree is gone, and this tree's gateway serves again
    assert not list(bench_run.stack.workdir.glob("baseline-*"))
    assert bench_run.stack.gateway is not None and bench_run.stack.gateway.name == "gateway-w1-default"
    listed = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "baseline-" not in listed


async def test_a_call_that_gets_no_answer_is_reported_by_what_was_raised() -> None:
    import socket

    from bench.load import Target, burst, burst_client
    from bench.scenarios import _statuses

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = Target(method="GET", url=f"http://127.0.0.1:{port}/v1/contacts", headers={})
    async with burst_client(3) as client:
        result = await burst(client, target, 3)
    assert result.errors == 3 and result.statuses == {}
    assert sum(result.failures.values()) == 3
    assert all(kind.startswith("ClientConnectorError") for kind in result.failures), result.failures
    assert _statuses(result).startswith("3× ClientConnectorError") and "socket errors" not in _statuses(
        result
    )
