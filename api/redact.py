"""Redaction of secrets from anything that is logged or stored in the request log."""

from __future__ import annotations

import json
import re
from typing import Any

SECRET_KEYS = re.compile(
    r"(pass(word)?|secret|token|authorization|api[_-]?key|session(id)?|cookie|credential|refresh|code_verifier)",
    re.IGNORECASE,
)
_XML_SECRET = re.compile(
    rb"<(password|sessionid|user_password|client_secret)(\s[^>]*)?>.*?</\1\s*>", re.IGNORECASE | re.DOTALL
)
REDACTED = "[redacted]"


def redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_KEYS.search(str(k)) else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


def redact_body(body: bytes | None, limit: int = 16_384) -> Any:
    """A stored form of an upstream or caller body: JSON redacted by key, XML by element, else a marker."""
    if not body:
        return None
    text = body[:limit]
    stripped = text.lstrip()
    if stripped.startswith((b"{", b"[")):
        try:
            return redact_value(json.loads(body))
        except ValueError:
            return REDACTED
    if stripped.startswith(b"<"):
        return _XML_SECRET.sub(
            lambda m: b"<" + m.group(1) + b">" + REDACTED.encode() + b"</" + m.group(1) + b">", text
        ).decode("utf-8", "replace")
    return f"<{len(body)} bytes>"
