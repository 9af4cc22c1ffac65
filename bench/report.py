"""The machine's description and ``docs/benchmarks.md``: generated blocks between markers, prose kept."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.scenarios import Section

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START = "<!-- bench:{name} -->"
END = "<!-- /bench:{name} -->"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _wrk_version() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        return "not installed"
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "wrk"


def machine(load: str = "") -> str:
    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    rows = [
        ("CPU", _cpu_model()),
        ("cores", f"{cores} ({usable} usable by this process)"),
        ("memory", _memory_gib()),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("load generator", _wrk_version()),
    ]
    if load:
        rows.append(("load average (1 min)", load))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def block(name: str, body: str) -> str:
    return f"{START.format(name=name)}\n{body.rstrip()}\n{END.format(name=name)}"


def update_doc(text: str, blocks: dict[str, str]) -> str:
    """Replace each named block in ``text``; append blocks that are not there yet."""
    for name, body in blocks.items():
        pattern = re.compile(
            re.escape(START.format(name=name)) + r".*?" + re.escape(END.format(name=name)), re.S
        )
        new = block(name, body)
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + new + text[found.end() :]
        else:
            text = text.rstrip() + "\n\n" + new + "\n"
    return text


def load_average() -> float:
    return os.getloadavg()[0]


def write(sections: list[Section], *, path: Path = DOC, when: str, command: str, load: str = "") -> None:
    stamp = f"\n_Measured {when} with `{command}`; load average (1 min) {load}._\n"
    blocks = {"machine": machine()}
    blocks.update({s.name: s.markdown() + stamp for s in sections})
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(update_doc(text, blocks))
