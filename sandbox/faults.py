"""Fault switches, call counters and the control API shared by both simulators.

Tests arm faults either in-process (``sim.faults.add(...)``) or over HTTP (``POST /_sim/faults``), so a
simulator running in its own uvicorn process can be driven by tests that start several gateway processes.
"""

from __future__ import annotations

import asyncio
import fnmatch
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal[
    "status",  # answer `status` without executing the call (nothing is written)
    "status_after_commit",  # execute the call (the write lands), then answer `status`
    "drop_after_commit",  # execute the call, start the response, then drop the connection
    "delay",  # sleep `delay` seconds before executing
    "delay_after_commit",  # execute, then sleep `delay` seconds before answering (client read timeouts)
]


@dataclass
class Fault:
    """One armed fault: applies to calls whose key matches ``match`` (fnmatch), ``times`` times (-1: forever)."""

    match: str
    kind: FaultKind
    status: int = 500
    retry_after: int | None = None
    delay: float = 0.0
    times: int = 1
    body: str | None = None


@dataclass
class Faults:
    """Armed faults and counters of a simulator. Thread-safe enough for one event loop plus test threads."""

    armed: list[Fault] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    inflight: int = 0
    max_inflight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.armed.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.armed.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.max_inflight = self.inflight

    def take(self, key: str) -> Fault | None:
        """Count a call and return the first armed fault that matches it (consuming one use)."""
        with self._lock:
            self.calls[key] += 1
            for fault in self.armed:
                if fnmatch.fnmatchcase(key, fault.match):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self.armed.remove(fault)
                    return fault
            return None

    def enter(self) -> None:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "inflight": self.inflight,
                "max_inflight": self.max_inflight,
                "armed": [asdict(f) for f in self.armed],
            }


async def sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def control_routes(faults: Faults) -> list[Any]:
    """The ``/_sim/faults`` and ``/_sim/counters`` routes (Starlette) every simulator mounts."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def add_fault(request: Request) -> Response:
        payload = await request.json()
        items = payload if isinstance(payload, list) else [payload]
        for item in items:
            faults.add(Fault(**item))
        return JSONResponse(faults.snapshot(), status_code=201)

    async def clear_faults(request: Request) -> Response:
        faults.clear()
        return Response(status_code=204)

    async def counters(request: Request) -> Response:
        return JSONResponse(faults.snapshot())

    async def reset_counters(request: Request) -> Response:
        faults.reset_counters()
        return Response(status_code=204)

    return [
        Route("/_sim/faults", add_fault, methods=["POST"]),
        Route("/_sim/faults", clear_faults, methods=["DELETE"]),
        Route("/_sim/counters", counters, methods=["GET"]),
        Route("/_sim/counters", reset_counters, methods=["DELETE"]),
    ]
