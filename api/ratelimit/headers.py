"""``RateLimit-Policy`` / ``RateLimit`` in the IETF draft's Structured-Field form (reliability-notes.md §1.2,
§1.6), serialised with ``http_sfv`` (RFC 9651), plus the classic trio for the most constrained policy.

No ``pk`` is ever emitted: partitions (tenants, companies) stay private.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from http_sfv.item import Item
from http_sfv.list import List

from api.ratelimit.policies import Policy


@dataclass(frozen=True)
class PolicyStatus:
    policy: Policy
    remaining: int
    reset: int | None
    """Seconds until more quota is available (``t``); ``None`` for an open concurrency cap."""


def seconds(value: float) -> int:
    """Delay-seconds: a non-negative integer, rounded up (never earlier than the real reset)."""
    return max(0, math.ceil(value - 1e-6))


def _policy_item(status: PolicyStatus) -> Item:
    item = Item(status.policy.name)
    item.params["q"] = status.policy.limit
    if status.policy.kind == "concurrency":
        item.params["qu"] = "concurrent-requests"
    else:
        item.params["w"] = status.policy.window
    return item


def _limit_item(status: PolicyStatus) -> Item:
    item = Item(status.policy.name)
    item.params["r"] = status.remaining
    if status.reset is not None:
        item.params["t"] = status.reset
    return item


def _serialize(items: Sequence[Item]) -> str:
    field = List()
    field.extend(items)
    return str(field)


_TOKEN_PARAM = re.compile(r"^[a-z][a-z0-9-]*$")


def _fast_item(name: str, params: Sequence[tuple[str, int | str]]) -> str | None:
    """The serialisation http_sfv gives an item of a plain name with integer or plain-string parameters
    (every policy here: names are ``[a-z][a-z0-9-]*``), without building its objects on every response.
    None for anything else (http_sfv then does it)."""
    if not _TOKEN_PARAM.match(name):
        return None
    out = [f'"{name}"']
    for key, value in params:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            out.append(f";{key}={value}")
        elif _TOKEN_PARAM.match(value):
            out.append(f';{key}="{value}"')
        else:
            return None
    return "".join(out)


def most_constrained(statuses: Sequence[PolicyStatus]) -> PolicyStatus:
    """The policy closest to refusing: lowest share of quota left, then the longest wait."""

    def rank(status: PolicyStatus) -> tuple[float, int]:
        share = status.remaining / status.policy.limit if status.policy.limit else 0.0
        return share, -(status.reset or 0)

    return min(statuses, key=rank)


def _limits(statuses: Sequence[PolicyStatus]) -> str:
    parts = []
    for s in statuses:
        params: list[tuple[str, int | str]] = [("r", s.remaining)]
        if s.reset is not None:
            params.append(("t", s.reset))
        part = _fast_item(s.policy.name, params)
        if part is None:
            return _serialize([_limit_item(s) for s in statuses])
        parts.append(part)
    return ", ".join(parts)


@functools.lru_cache(maxsize=256)
def _policies(policies: tuple[Policy, ...]) -> str:
    """``RateLimit-Policy`` depends on the policies only: serialised once per set."""
    return _serialize([_policy_item(PolicyStatus(p, 0, None)) for p in policies])


def render(statuses: Sequence[PolicyStatus]) -> dict[str, str]:
    if not statuses:
        return {}
    worst = most_constrained(statuses)
    return {
        "RateLimit-Policy": _policies(tuple(s.policy for s in statuses)),
        "RateLimit": _limits(statuses),
        "RateLimit-Limit": str(worst.policy.limit),
        "RateLimit-Remaining": str(worst.remaining),
        # A full concurrency cap has no reset time: say "in a second" (when a slot may free) rather than 0.
        "RateLimit-Reset": str(worst.reset if worst.reset is not None else int(worst.remaining == 0)),
    }
