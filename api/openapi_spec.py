"""The spec as committed in ``openapi/openapi.json`` (generated from the app, stable across machines)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from api.settings import Settings

_KEYRING = '{"spec": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}'


def spec() -> dict[str, Any]:
    from api.app import create_app

    settings = Settings(database_url="sqlite:///:memory:", keyring=SecretStr(_KEYRING), active_key_id="spec")
    return create_app(settings).openapi()


def spec_json() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"
