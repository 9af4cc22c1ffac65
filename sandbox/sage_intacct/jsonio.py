"""JSON that keeps money exact: Decimals are written as JSON numbers without passing through float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TypeAlias

from .values import fmt_decimal

JSON: TypeAlias = "bool | int | str | Decimal | list[JSON] | dict[str, JSON] | None"


def dumps(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return fmt_decimal(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    return "{" + ",".join(f"{json.dumps(key)}:{dumps(item)}" for key, item in value.items()) + "}"


def loads(text: bytes) -> object:
    return json.loads(text, parse_float=Decimal)
