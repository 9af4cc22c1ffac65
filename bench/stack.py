"""The benchmarked system: both simulators and the gateway as real processes on 127.0.0.1.

Every process is started in its own session (process group) and killed with it on exit, so a uvicorn
supervisor never outlives the bench with orphaned workers.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SAGE_CLIENT_ID = "ledgerbridge-sandbox"
SAGE_CLIENT_SECRET = "ledgerbridge-sandbox-secret"
INTACCT_SENDER_ID = "sandbox-sender"
INTACCT_SENDER_PASSWORD = "sandbox-sender-password"
INTACCT_CREDENTIALS = {"company_id": "DEMO-CO", "user_id": "demo-user", "user_password": "demo-password"}
ADMIN_TOKEN = "bench-admin-token"


class StackError(RuntimeError):
    """A process of the stack did not start or a setup call failed (the message says which, with its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)


def _python() -> str:
    return sys.executable


def ledgerbridge_command() -> list[str]:
    """The ``ledgerbridge`` console script beside this interpreter, else ``python -m api.cli``."""
    script = Path(sys.executable).with_name("ledgerbridge")
    if script.exists():
        return [str(script)]
    return [_python(), "-c", "import sys; from api.cli import main; sys.exit(main())"]


def intacct_available() -> bool:
    return (REPO / "sandbox" / "sage_intacct" / "__main__.py").exists()


@dataclass
class Stack:
    """The simulators and (re)startable gateway processes, with a tenant and its connections."""

    workdir: Path
    database_url: str = ""
    log_level: str = "INFO"
    procs: list[Proc] = field(default_factory=list)
    sage: Proc | None = None
    intacct: Proc | None = None
    gateway: Proc | None = None
    api_key: str = ""
    sage_connection: str = ""
    intacct_connection: str = ""
    keyring: str = ""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = f"sqlite:///{self.workdir / 'gateway.db'}"
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.keyring = json.dumps({"bench": key})
        atexit.register(self.close)

    # --- processes ---------------------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        port: int,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        proc = Proc(name, popen, f"http://{HOST}:{port}", log)
        self.procs.append(proc)
        return proc

    def _wait_ready(self, proc: Proc, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    raise StackError(f"{proc.name} exited with {proc.popen.returncode}:\n{_tail(proc.log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(proc.url + path).status_code < 500:
                        return
                time.sleep(0.1)
        raise StackError(f"{proc.name} not ready after {timeout:.0f} s:\n{_tail(proc.log)}")

    def start_simulators(self, *, access_token_ttl: int = 3600) -> None:
        port = free_port()
        self.sage = self._spawn(
            "sage-accounting",
            [
                _python(),
                "-m",
                "sandbox.sage_accounting",
                "--host",
                HOST,
                "--port",
                str(port),
                "--access-token-ttl",
                str(access_token_ttl),
                "--log-level",
                "warning",
            ],
            port,
        )
        self._wait_ready(self.sage, "/_sim/counters")
        if intacct_available():
            port = free_port()
            self.intacct = self._spawn(
                "sage-intacct",
                [
                    _python(),
                    "-m",
                    "sandbox.sage_intacct",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                port,
            )
            self._wait_ready(self.intacct, "/_sim/counters")

    def gateway_env(self, public_url: str) -> dict[str, str]:
        assert self.sage is not None
        env = {
            "LEDGERBRIDGE_ENV": "development",
            "LEDGERBRIDGE_DATABASE_URL": self.database_url,
            "LEDGERBRIDGE_KEYRING": self.keyring,
            "LEDGERBRIDGE_ACTIVE_KEY_ID": "bench",
            "LEDGERBRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEDGERBRIDGE_PUBLIC_URL": public_url,
            "LEDGERBRIDGE_LOG_LEVEL": self.log_level,
            "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_ID": SAGE_CLIENT_ID,
            "LEDGERBRIDGE_SAGE_ACCOUNTING_CLIENT_SECRET": SAGE_CLIENT_SECRET,
            "LEDGERBRIDGE_SAGE_ACCOUNTING_AUTHORIZE_URL": f"{self.sage.url}/oauth2/auth/central?filter=apiv3.1",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_TOKEN_URL": f"{self.sage.url}/token",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_REVOKE_URL": f"{self.sage.url}/revoke",
            "LEDGERBRIDGE_SAGE_ACCOUNTING_API_URL": f"{self.sage.url}/v3.1",
            # Every budget stays on; only the tenant's own fairness quota (600/min) is lifted, or the
            # benchmark would measure that quota's 429s instead of the gateway.
            "LEDGERBRIDGE_RATE_LIMIT_POLICIES": json.dumps({"tenant": {"limit": 1_000_000_000}}),
            "LEDGERBRIDGE_SAGE_INTACCT_SENDER_ID": INTACCT_SENDER_ID,
            "LEDGERBRIDGE_SAGE_INTACCT_SENDER_PASSWORD": INTACCT_SENDER_PASSWORD,
        }
        if self.intacct is not None:
            env["LEDGERBRIDGE_SAGE_INTACCT_XML_URL"] = f"{self.intacct.url}/ia/xml/xmlgw.phtml"
            env["LEDGERBRIDGE_SAGE_INTACCT_REST_URL"] = f"{self.intacct.url}/ia/api/v1"
        return env

    def start_gateway(
        self, *, workers: int = 1, transport: str | None = None, source: Path | None = None
    ) -> Proc:
        """``ledgerbridge serve``; ``transport`` sets ``LEDGERBRIDGE_HTTP_TRANSPORT`` (unset: the default).

        With ``source``, the gateway runs from that source tree (e.g. a ``git worktree`` of an older
        revision) instead of this checkout: ``python -m api.cli serve`` with ``cwd`` and ``PYTHONPATH`` set
        to it, so its ``api``, ``connectors``, ``models`` and ``migrations`` shadow the editable install.
        """
        self.stop_gateway()
        port = free_port()
        url = f"http://{HOST}:{port}"
        env = self.gateway_env(url)
        if transport:
            env["LEDGERBRIDGE_HTTP_TRANSPORT"] = transport
        cwd = REPO
        base = ledgerbridge_command()
        if source is not None:
            cwd = source
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(source), os.environ.get("PYTHONPATH", "")) if p
            )
            base = [_python(), "-m", "api.cli"]
        argv = [*base, "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
        name = f"gateway-w{workers}-" + ("baseline" if source is not None else transport or "default")
        if source is not None and transport:
            name += f"-{transport}"
        self.gateway = self._spawn(name, argv, port, env, cwd=cwd)
        self._wait_ready(self.gateway, "/healthz", timeout=60.0)
        if workers > 1:
            self._wait_workers(self.gateway, workers)
        return self.gateway

    def start_reference_proxy(self) -> Proc:
        """``python -m bench.reference_proxy`` in front of the Sage simulator (the throughput scenario's floor).

        Not tracked as :attr:`gateway`: the caller stops it with :meth:`stop_proc` (or :meth:`close` does).
        """
        assert self.sage is not None
        port = free_port()
        argv = [
            _python(),
            "-m",
            "bench.reference_proxy",
            "--host",
            HOST,
            "--port",
            str(port),
            "--upstream",
            self.sage.url,
        ]
        proc = self._spawn("reference-proxy", argv, port)
        self._wait_ready(proc, "/_ready")
        return proc

    def stop_proc(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    @staticmethod
    def _wait_workers(proc: Proc, workers: int, timeout: float = 30.0) -> None:
        """uvicorn answers as soon as one worker is up; wait until every worker has started."""
        from bench.memory import process_tree

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(process_tree(proc.pid)) < workers + 1:
            time.sleep(0.1)
        time.sleep(1.0)

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.procs.remove(self.gateway)
            self.gateway = None

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        self.gateway = self.sage = self.intacct = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tenant and connections ----------------------------------------------------------------------

    def create_tenant(self, name: str = "bench") -> str:
        """``ledgerbridge tenants create`` against the stack's database; returns the API key."""
        assert self.sage is not None
        out = subprocess.run(
            [*ledgerbridge_command(), "tenants", "create", name],
            cwd=REPO,
            env={**os.environ, **self.gateway_env("http://127.0.0.1")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise StackError(f"ledgerbridge tenants create failed:\n{out.stderr[-2000:]}")
        line = next(line for line in out.stdout.splitlines() if line.startswith("{"))
        self.api_key = json.loads(line)["api_key"]
        return self.api_key

    def headers(self, connection: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if connection:
            headers["X-Connection-Id"] = connection
        return headers

    def connect_sage(self, attempts: int = 3) -> str:
        """The real OAuth flow: create → follow authorization_url on the simulator → callback.

        Retried on ``invalid_state``: the gateway commits the OAuth state after sending the response
        (docs/benchmarks.md, "Found while benchmarking"), so an immediate consent can race it.
        """
        for attempt in range(1, attempts + 1):
            try:
                return self._connect_sage_once()
            except StackError as exc:
                if "invalid_state" not in str(exc) or attempt == attempts:
                    raise
                print(
                    f"!! OAuth callback raced the state's commit (attempt {attempt}); retrying",
                    file=sys.stderr,
                )
        raise AssertionError("unreachable")

    def _connect_sage_once(self) -> str:
        assert self.gateway is not None
        with httpx.Client(base_url=self.gateway.url, timeout=30.0) as client:
            r = client.post("/v1/connections", json={"provider": "sage_accounting"}, headers=self.headers())
            _check(r, 201, "POST /v1/connections (sage_accounting)")
            approve = client.get(r.json()["authorization_url"], follow_redirects=False)
            _check(approve, 302, "simulated Sage consent")
            callback = client.get(approve.headers["location"])
            _check(callback, 200, "GET /v1/oauth/callback")
            body: dict[str, Any] = callback.json()
        if body.get("status") != "active":
            raise StackError(f"the Sage connection is {body.get('status')!r}, not active")
        self.sage_connection = body["id"]
        return self.sage_connection

    def connect_intacct(self) -> str:
        assert self.gateway is not None
        with httpx.Client(base_url=self.gateway.url, timeout=30.0) as client:
            r = client.post(
                "/v1/connections",
                json={"provider": "sage_intacct", "credentials": INTACCT_CREDENTIALS},
                headers=self.headers(),
            )
            _check(r, 201, "POST /v1/connections (sage_intacct)")
        self.intacct_connection = r.json()["id"]
        return self.intacct_connection

    # --- simulator controls ----------------------------------------------------------------------------

    def sim(self, which: str, method: str, path: str, body: Any = None) -> Any:
        proc = self.sage if which == "sage" else self.intacct
        if proc is None:
            raise StackError(f"the {which} simulator is not running")
        r = httpx.request(method, proc.url + path, json=body, timeout=120.0)
        if r.status_code >= 400:
            raise StackError(f"{method} {path} on the {which} simulator: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def counters(self, which: str) -> dict[str, int]:
        calls: dict[str, int] = self.sim(which, "GET", "/_sim/counters")["calls"]
        return calls

    def reset_counters(self, which: str) -> None:
        self.sim(which, "DELETE", "/_sim/counters")

    def sage_direct_token(self) -> str:
        """An access token minted by the simulator (``POST /_sim/tokens``) for calling it directly."""
        token: str = self.sim("sage", "POST", "/_sim/tokens", {})["access_token"]
        return token

    def sage_business(self) -> str:
        assert self.sage is not None
        r = httpx.get(
            f"{self.sage.url}/v3.1/businesses",
            headers={"Authorization": f"Bearer {self.sage_direct_token()}"},
            timeout=30.0,
        )
        _check(r, 200, "GET /v3.1/businesses")
        business: str = r.json()["$items"][0]["id"]
        return business


def _check(r: httpx.Response, status: int, what: str) -> None:
    if r.status_code != status:
        raise StackError(f"{what}: expected {status}, got {r.status_code}: {r.text[:500]}")
