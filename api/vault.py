"""Credential vault: AES-256-GCM with per-field associated data and a keyring with key ids.

Envelope per field: ``v1.<kid>.<b64url nonce>.<b64url ciphertext||tag>`` (reliability-notes.md §4.4).
The associated data binds a ciphertext to its tenant, connection, field and key id, so a ciphertext copied
into another row (or another tenant) fails to decrypt.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)


class VaultError(Exception):
    """A ciphertext could not be decrypted (tampered, moved, or its key is not in the keyring)."""


class KeyringError(Exception):
    """The keyring configuration is unusable; the gateway refuses to start."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def associated_data(tenant_id: str, connection_id: str, field: str, kid: str) -> bytes:
    return json.dumps(["lb/cred/v1", tenant_id, connection_id, field, kid], separators=(",", ":")).encode()


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, bytes]
    active: str

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyringError(f"the active key id {self.active!r} is not in the keyring")
        for kid, key in self.keys.items():
            if len(key) != 32:
                raise KeyringError(f"key {kid!r} is not 32 bytes")
            if "." in kid or not kid:
                raise KeyringError(f"key id {kid!r} must be non-empty and contain no '.'")

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self.keys)}, active={self.active!r})"

    @classmethod
    def from_json(cls, text: str, active: str | None) -> Keyring:
        try:
            raw = json.loads(text)
            keys = {str(kid): base64.b64decode(value, validate=True) for kid, value in raw.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise KeyringError(
                "LEDGERBRIDGE_KEYRING must be a JSON object {key id: base64 32-byte key}"
            ) from exc
        if not keys:
            raise KeyringError("the keyring is empty")
        if active is None:
            if len(keys) != 1:
                raise KeyringError("LEDGERBRIDGE_ACTIVE_KEY_ID is required when the keyring has several keys")
            active = next(iter(keys))
        return cls(keys, active)

    @classmethod
    def development(cls, path: Path) -> Keyring:
        """A local key file for development, created on first use, with a loud warning."""
        log.warning(
            "LEDGERBRIDGE_KEYRING is not set: using the development key file %s. "
            "Set LEDGERBRIDGE_KEYRING and LEDGERBRIDGE_ACTIVE_KEY_ID in production.",
            path,
        )
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            kid = "dev-" + os.urandom(4).hex()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(
                    {"active": kid, "keys": {kid: base64.b64encode(AESGCM.generate_key(256)).decode()}},
                    handle,
                )
        data = json.loads(path.read_text())
        return cls.from_json(json.dumps(data["keys"]), data["active"])

    def encrypt(self, plaintext: str, *, tenant_id: str, connection_id: str, field: str) -> str:
        kid = self.active
        nonce = os.urandom(12)
        aad = associated_data(tenant_id, connection_id, field, kid)
        sealed = AESGCM(self.keys[kid]).encrypt(nonce, plaintext.encode(), aad)
        return f"v1.{kid}.{_b64e(nonce)}.{_b64e(sealed)}"

    def decrypt(self, envelope: str, *, tenant_id: str, connection_id: str, field: str) -> str:
        try:
            version, kid, nonce_text, sealed_text = envelope.split(".")
        except ValueError:
            raise VaultError("malformed ciphertext") from None
        if version != "v1":
            raise VaultError("unknown ciphertext version")
        key = self.keys.get(kid)
        if key is None:
            raise VaultError(f"ciphertext key id {kid!r} is not in the keyring")
        aad = associated_data(tenant_id, connection_id, field, kid)
        try:
            return AESGCM(key).decrypt(_b64d(nonce_text), _b64d(sealed_text), aad).decode()
        except (InvalidTag, ValueError):
            raise VaultError("ciphertext failed authentication") from None

    @staticmethod
    def key_id_of(envelope: str) -> str:
        parts = envelope.split(".")
        return parts[1] if len(parts) == 4 else ""


def load_keyring(keyring_json: str | None, active: str | None, *, env: str, dev_key_file: str) -> Keyring:
    if keyring_json:
        return Keyring.from_json(keyring_json, active)
    if env == "production":
        raise KeyringError(
            "LEDGERBRIDGE_ENV=production requires LEDGERBRIDGE_KEYRING and LEDGERBRIDGE_ACTIVE_KEY_ID"
        )
    return Keyring.development(Path(dev_key_file))
