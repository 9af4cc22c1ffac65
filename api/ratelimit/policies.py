"""Rate-limit policies: named, declared by data, overridable from settings.

A policy is either a **quota** (``limit`` calls per fixed ``window`` of seconds, windows aligned to the Unix
epoch so a one-day window is the UTC calendar day the upstream counts) or a **concurrency** cap (``limit``
calls in flight at once). Each policy is partitioned:

* ``app`` — one budget for the whole provider app (every tenant shares it: Sage counts per client app);
* ``scope`` — one budget per upstream business/company (``UpstreamCall.scope``);
* ``tenant`` — one budget per calling tenant (the gateway's own fairness quota; provider ``None``).

Policy names are stable lowercase strings shown in ``RateLimit-Policy``; partitions are never shown (no
``pk``), so a name never carries a tenant id.

``LEDGERBRIDGE_RATE_LIMIT_POLICIES`` overrides the defaults with a JSON object ``{name: fields | null}``:
fields of an existing policy are replaced one by one, a new name needs every required field, ``null``
removes a policy. Example: ``{"sage-intacct": {"limit": 4}, "tenant": {"limit": 1200}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

PolicyKind = Literal["quota", "concurrency"]
Partition = Literal["app", "scope", "tenant"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ALL_KINDS = ("read", "write", "auth")


@dataclass(frozen=True)
class Policy:
    name: str
    kind: PolicyKind
    limit: int
    partition: Partition
    provider: str | None = None
    """The connector this policy governs; ``None``: every upstream call (the tenant's gateway quota)."""
    window: int = 0
    """Quota window in seconds (quota policies only)."""
    kinds: tuple[str, ...] = _ALL_KINDS
    """Which call kinds count (``read``, ``write``, ``auth``)."""
    upstream_signals: bool = False
    """Upstream 429s and rate-limit headers of ``provider`` close this policy until the upstream's time."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"rate-limit policy name {self.name!r} must be lowercase [a-z0-9-]")
        if self.kind not in ("quota", "concurrency"):
            raise ValueError(f"rate-limit policy {self.name}: kind must be quota or concurrency")
        if self.partition not in ("app", "scope", "tenant"):
            raise ValueError(f"rate-limit policy {self.name}: partition must be app, scope or tenant")
        if self.limit < 0:
            raise ValueError(f"rate-limit policy {self.name}: limit must be >= 0")
        if self.kind == "quota" and self.window <= 0:
            raise ValueError(f"rate-limit policy {self.name}: a quota needs a window > 0 seconds")
        if self.provider is None and self.partition == "scope":
            raise ValueError(f"rate-limit policy {self.name}: a scope partition needs a provider")
        unknown = set(self.kinds) - set(_ALL_KINDS)
        if unknown:
            raise ValueError(f"rate-limit policy {self.name}: unknown call kinds {sorted(unknown)}")

    def applies(self, provider: str, kind: str) -> bool:
        return (self.provider is None or self.provider == provider) and kind in self.kinds

    def partition_value(self, tenant_id: str, scope: str | None) -> str | None:
        """The partition a call falls in; ``None`` when the policy cannot apply (no scope known)."""
        if self.partition == "app":
            return "app"
        if self.partition == "tenant":
            return "t:" + tenant_id
        return "s:" + scope if scope else None


DAY = 86_400

# Sage Accounting (sage-accounting-wire.md §6): "1,296,000 requests per app per day; max 150 concurrent
# requests per app". The OAuth token endpoint is another host and not part of that budget.
# Sage Intacct (sage-intacct-wire.md §4): the binding constraint is concurrency per company (2 by the
# third-party figure); the Sage Accounting per-app figures are kept as an upper bound for the app.
DEFAULT_POLICIES: tuple[Policy, ...] = (
    Policy("tenant", "quota", 600, "tenant", window=60),
    Policy(
        "sage-accounting",
        "quota",
        1_296_000,
        "app",
        provider="sage_accounting",
        window=DAY,
        kinds=("read", "write"),
        upstream_signals=True,
    ),
    Policy(
        "sage-accounting-concurrency",
        "concurrency",
        150,
        "app",
        provider="sage_accounting",
        kinds=("read", "write"),
    ),
    # Named after the provider, as connectors/http.py names it when the upstream keeps answering 429.
    Policy("sage-intacct", "concurrency", 2, "scope", provider="sage_intacct", upstream_signals=True),
    Policy("sage-intacct-app", "quota", 1_296_000, "app", provider="sage_intacct", window=DAY),
    Policy("sage-intacct-concurrency", "concurrency", 150, "app", provider="sage_intacct"),
)


def _coerce(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {f.name for f in fields(Policy)} - {"name"}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"rate-limit policy {name}: unknown fields {sorted(unknown)}")
    values = dict(raw)
    if "kinds" in values:
        values["kinds"] = tuple(values["kinds"])
    return values


def load_policies(overrides: Mapping[str, Mapping[str, Any] | None] | None) -> tuple[Policy, ...]:
    """The defaults with ``overrides`` applied (see the module doc)."""
    policies = {p.name: p for p in DEFAULT_POLICIES}
    for name, raw in (overrides or {}).items():
        if raw is None:
            policies.pop(name, None)
            continue
        values = _coerce(name, raw)
        current = policies.get(name)
        try:
            policies[name] = replace(current, **values) if current else Policy(name=name, **values)
        except TypeError as exc:
            raise ValueError(f"rate-limit policy {name}: {exc}") from None
    return tuple(policies.values())
