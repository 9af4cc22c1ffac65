"""Load generation: ``wrk`` (native, the real numbers) or a small httpx loop (smoke mode, no wrk needed);
bursts of concurrent calls released at once (the refresh storm) on aiohttp."""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import yarl

WRK_HINT = (
    "wrk (a native HTTP load generator) is not installed. Install it with `apt-get install -y wrk` "
    "(Debian/Ubuntu; run as root or with sudo), `brew install wrk` (macOS), or build it from "
    "https://github.com/wg/wrk; or run `python -m bench --smoke`, which needs no wrk."
)


class WrkMissing(RuntimeError):
    pass


@dataclass
class Target:
    """One HTTP call to repeat."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    expect: int = 200
    unique_header: str | None = None
    """A header given a new value on every call (``<run>-<thread>-<n>``): an ``Idempotency-Key`` makes every
    call a new write instead of a replay of the first."""
    _run: str = field(default_factory=lambda: secrets.token_hex(4), repr=False)
    _calls: int = field(default=0, repr=False)

    def call_headers(self) -> dict[str, str]:
        """The headers of the next call (the unique header numbered)."""
        if self.unique_header is None:
            return self.headers
        self._calls += 1
        return {**self.headers, self.unique_header: f"{self._run}-py-{self._calls}"}


@dataclass
class LoadResult:
    tool: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    """Calls that got no answer, by what the client raised (httpx loops and aiohttp bursts; wrk counts them
    in ``errors``)."""
    cpu_ms: float | None = None
    """CPU time (user + system) the measured server process tree spent per answered call."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "connections": self.connections,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": self.errors,
            "failures": dict(self.failures),
            "cpu_ms_per_call": None if self.cpu_ms is None else round(self.cpu_ms, 3),
        }


def wrk_path() -> str | None:
    return shutil.which("wrk")


def ensure_wrk(*, install: bool) -> str:
    """The path of ``wrk``; installs it with apt when allowed and running as root, else explains how."""
    path = wrk_path()
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it with `apt-get install -y wrk` …", flush=True)
        done = subprocess.run(
            ["apt-get", "install", "-y", "wrk"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, check=False)
            subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
        path = wrk_path()
        if path:
            return path
    raise WrkMissing(WRK_HINT)


def _lua_string(value: str) -> str:
    if not value.isascii():
        raise ValueError("wrk scripts here carry ASCII only (Lua 5.1 strings have no \\u escapes)")
    return json.dumps(value)


def _wrk_script(target: Target) -> str:
    lines = [f"wrk.method = {_lua_string(target.method)}"]
    if target.body is not None:
        lines.append(f"wrk.body = {_lua_string(target.body.decode())}")
    for name, value in target.headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if target.unique_header is not None:
        # setup() runs in the main Lua state once per thread; request() in each thread's own state.
        lines.append(
            f"""
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local calls = 0
request = function()
  calls = calls + 1
  wrk.headers[{_lua_string(target.unique_header)}] = {_lua_string(target._run)} .. "-" .. tid .. "-" .. calls
  return wrk.format()
end
"""
        )
    lines.append(
        """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"errors\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""
    )
    return "\n".join(lines)


def run_wrk(target: Target, *, connections: int, duration: float, threads: int = 1) -> LoadResult:
    """``wrk`` for ``duration`` seconds; non-2xx/3xx answers and socket errors count as errors."""
    wrk = ensure_wrk(install=False)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(target))
    try:
        out = subprocess.run(
            [
                wrk,
                "-t",
                str(min(threads, connections)),
                "-c",
                str(connections),
                "-d",
                f"{max(1, round(duration))}s",
                "--timeout",
                "30s",
                "-s",
                script.name,
                target.url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 90,
            check=False,
        )
    finally:
        os.unlink(script.name)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-1000:]} {out.stdout[-1000:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return LoadResult(
        tool="wrk",
        connections=connections,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
    )


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Tally:
    """What an httpx loop or an aiohttp burst saw: the latency of every answered call, the statuses, the
    errors (socket errors and answers other than the target's expected status)."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    async def call(self, client: httpx.AsyncClient, target: Target) -> None:
        t0 = time.perf_counter()
        try:
            r = await client.request(
                target.method, target.url, headers=target.call_headers(), content=target.body
            )
        except httpx.HTTPError as exc:
            self.failed(exc)
            return
        self.answered((time.perf_counter() - t0) * 1000, r.status_code, target)

    def answered(self, latency_ms: float, status: int, target: Target) -> None:
        self.latencies.append(latency_ms)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != target.expect:
            self.errors += 1

    def failed(self, exc: BaseException) -> None:
        """A call that got no answer, counted by what the client raised."""
        self.errors += 1
        kind = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def result(self, connections: int, seconds: float, *, tool: str = "httpx") -> LoadResult:
        return LoadResult(
            tool=tool,
            connections=connections,
            requests=len(self.latencies),
            seconds=seconds,
            p50_ms=percentile(self.latencies, 50),
            p90_ms=percentile(self.latencies, 90),
            p99_ms=percentile(self.latencies, 99),
            errors=self.errors,
            statuses=self.statuses,
            failures=self.failures,
        )


async def run_httpx(
    target: Target, *, connections: int, requests: int | None = None, duration: float | None = None
) -> LoadResult:
    """``connections`` workers repeating ``target`` until ``requests`` are done or ``duration`` passed."""
    tally = _Tally()
    issued = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    started = time.perf_counter()
    deadline = started + duration if duration is not None else math.inf

    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            nonlocal issued
            while time.perf_counter() < deadline and (requests is None or issued < requests):
                issued += 1
                await tally.call(client, target)

        await asyncio.gather(*(worker() for _ in range(connections)))
    return tally.result(connections, time.perf_counter() - started)


def burst_client(count: int) -> aiohttp.ClientSession:
    """A client able to hold ``count`` connections open at once (for :func:`burst`); open it inside the loop.

    aiohttp, not httpx: httpx's connection pool is the bottleneck of a burst of hundreds of calls (500 calls
    released at once took 5 s directly against the simulator, against 0.3 s with aiohttp), so with it the
    storm's percentiles measured the load generator.
    """
    # Idle connections are dropped client-side after 3 s, before uvicorn closes them at 5 s (its default
    # keep-alive): reusing a connection the server is closing at that very moment is a socket error of the
    # load generator, not an answer of the gateway.
    connector = aiohttp.TCPConnector(limit=count, limit_per_host=count, keepalive_timeout=3.0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=120.0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _burst_call(session: aiohttp.ClientSession, target: Target, tally: _Tally) -> None:
    t0 = time.perf_counter()
    try:
        async with session.request(
            target.method,
            yarl.URL(target.url, encoded=True),
            headers=target.call_headers(),
            data=target.body,
        ) as r:
            await r.read()
            status = r.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.failed(exc)
        return
    tally.answered((time.perf_counter() - t0) * 1000, status, target)


async def burst(client: aiohttp.ClientSession, target: Target, count: int) -> LoadResult:
    """``count`` calls released at once; a second burst on the same client reuses warm connections."""
    tally = _Tally()
    gate = asyncio.Event()

    async def one() -> None:
        await gate.wait()
        await _burst_call(client, target, tally)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    return tally.result(count, time.perf_counter() - started, tool="aiohttp")
