"""``python -m bench [--smoke] [--only NAME …] [--duration S] [--baseline REV]``: run the scenarios, print,
write the doc (docs/benchmarks.md).

The ``fixes`` scenario measures this tree's gateway against ``--baseline REV`` (default: the last commit
before the hot-path work of the benchmark issue), checked out in a temporary ``git worktree``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import tempfile
from pathlib import Path

from bench import report
from bench.load import WrkMissing, ensure_wrk
from bench.scenarios import BASELINE, SCENARIOS, Run, Section
from bench.stack import Stack


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few iterations of each scenario with an httpx loop (no wrk); writes no doc",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run (default 10)")
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections for throughput (default 32)"
    )
    parser.add_argument(
        "--invoices", type=int, default=None, help="invoices seeded per provider (default 10000)"
    )
    parser.add_argument(
        "--storm", type=int, default=None, help="concurrent calls of the refresh storm (default 500)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of the throughput and fixes scenarios (default 3; 1 with --smoke)",
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        metavar="REV",
        help=f"git revision the fixes scenario measures as 'before' (default {BASELINE}: the last commit "
        "before the hot-path fixes)",
    )
    parser.add_argument(
        "--database-url", default="", help="gateway database (default: a temporary SQLite file)"
    )
    parser.add_argument("--doc", type=Path, default=report.DOC, help="where to write the results")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers as JSON here")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the processes' logs and database here (default: a temporary directory)",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    return parser


def run(args: argparse.Namespace) -> tuple[list[Section], dict[str, str]]:
    """Run the selected scenarios; returns their sections and the errors of those that failed."""
    names = args.only or list(SCENARIOS)
    sections: list[Section] = []
    failures: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp,
        Stack(args.workdir or Path(tmp), args.database_url) as stack,
    ):
        stack.start_simulators()
        bench = Run(
            stack,
            smoke=args.smoke,
            duration=args.duration,
            connections=args.connections if not args.smoke else 4,
            invoices=args.invoices or (250 if args.smoke else 10_000),
            storm=args.storm or (20 if args.smoke else 500),
            use_wrk=not args.smoke,
            rounds=1 if args.smoke else args.rounds,
            baseline=args.baseline,
        )
        for name in names:
            print(f"== {name} …", file=sys.stderr, flush=True)
            try:
                section = SCENARIOS[name](bench)
            except Exception as exc:  # one broken scenario must not hide the others' numbers
                lines = str(exc).splitlines()
                failures[name] = f"{type(exc).__name__}: {lines[0] if lines else ''}" + (
                    f" … {lines[-1]}" if len(lines) > 1 else ""
                )
                print(f"!! {name} failed: {failures[name]}", file=sys.stderr, flush=True)
                continue
            sections.append(section)
            print(section.markdown(), flush=True)
    return sections, failures


def _exit_on_signal(signum: int, _frame: object) -> None:
    # SystemExit unwinds the ``with Stack`` block, which stops every subprocess (they run in their own
    # sessions, so a signal to the bench alone would leave them behind).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    args = build_parser().parse_args(argv)
    if not args.smoke:
        try:
            ensure_wrk(install=not args.no_install)
        except WrkMissing as exc:
            print(exc, file=sys.stderr)
            return 2
    print(report.machine(), flush=True)
    load_before = report.load_average()
    sections, failures = run(args)
    load = f"{load_before:.2f} before the run, {report.load_average():.2f} after"
    if not args.smoke and not args.no_doc and sections:
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        report.write(
            sections,
            path=args.doc,
            when=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            command=command.strip(),
            load=load,
        )
        print(f"wrote {args.doc}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {s.name: {"checks": s.checks, "data": s.data} for s in sections} | {"failures": failures},
                indent=2,
                default=str,
            )
        )
    if failures:
        for name, error in failures.items():
            print(f"scenario {name} failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
