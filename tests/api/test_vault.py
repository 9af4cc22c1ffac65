from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from api.vault import Keyring, KeyringError, VaultError, load_keyring

K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()


def ring(active: str = "a") -> Keyring:
    return Keyring.from_json(json.dumps({"a": K1, "b": K2}), active)


def test_round_trip_carries_key_id() -> None:
    kr = ring()
    sealed = kr.encrypt("s3cret", tenant_id="t1", connection_id="c1", field="refresh_token")
    assert sealed.startswith("v1.a.")
    assert "s3cret" not in sealed
    assert kr.decrypt(sealed, tenant_id="t1", connection_id="c1", field="refresh_token") == "s3cret"


def test_nonce_is_random() -> None:
    kr = ring()
    a = kr.encrypt("x", tenant_id="t", connection_id="c", field="f")
    b = kr.encrypt("x", tenant_id="t", connection_id="c", field="f")
    assert a != b


@pytest.mark.parametrize(
    ("tenant", "connection", "field"),
    [("t2", "c1", "refresh_token"), ("t1", "c2", "refresh_token"), ("t1", "c1", "access_token")],
)
def test_ciphertext_moved_to_another_row_fails(tenant: str, connection: str, field: str) -> None:
    kr = ring()
    sealed = kr.encrypt("s3cret", tenant_id="t1", connection_id="c1", field="refresh_token")
    with pytest.raises(VaultError):
        kr.decrypt(sealed, tenant_id=tenant, connection_id=connection, field=field)


def test_tampered_ciphertext_fails() -> None:
    kr = ring()
    sealed = kr.encrypt("s3cret", tenant_id="t", connection_id="c", field="f")
    head, tail = sealed.rsplit(".", 1)
    flipped = tail[:-2] + ("A" if tail[-2] != "A" else "B") + tail[-1]
    with pytest.raises(VaultError):
        kr.decrypt(f"{head}.{flipped}", tenant_id="t", connection_id="c", field="f")
    with pytest.raises(VaultError):
        kr.decrypt("garbage", tenant_id="t", connection_id="c", field="f")


def test_key_id_is_authenticated() -> None:
    kr = ring()
    sealed = kr.encrypt("s3cret", tenant_id="t", connection_id="c", field="f")
    relabelled = sealed.replace("v1.a.", "v1.b.", 1)
    with pytest.raises(VaultError):
        kr.decrypt(relabelled, tenant_id="t", connection_id="c", field="f")


def test_unknown_key_id_fails_closed() -> None:
    sealed = ring().encrypt("s3cret", tenant_id="t", connection_id="c", field="f")
    only_b = Keyring.from_json(json.dumps({"b": K2}), "b")
    with pytest.raises(VaultError, match="not in the keyring"):
        only_b.decrypt(sealed, tenant_id="t", connection_id="c", field="f")


def test_old_keys_still_decrypt_after_switching_active() -> None:
    sealed = ring("a").encrypt("s3cret", tenant_id="t", connection_id="c", field="f")
    assert ring("b").decrypt(sealed, tenant_id="t", connection_id="c", field="f") == "s3cret"


@pytest.mark.parametrize(
    ("keyring", "active"),
    [
        ("not json", None),
        ("{}", None),
        (json.dumps({"a": base64.b64encode(b"short").decode()}), "a"),
        (json.dumps({"a": K1}), "missing"),
        (json.dumps({"a": K1, "b": K2}), None),
    ],
)
def test_bad_keyrings_are_refused(keyring: str, active: str | None) -> None:
    with pytest.raises(KeyringError):
        Keyring.from_json(keyring, active)


def test_production_refuses_to_start_without_keyring(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="production"):
        load_keyring(None, None, env="production", dev_key_file=str(tmp_path / "k.json"))
    assert not (tmp_path / "k.json").exists()


def test_development_key_file_is_made_once_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dev" / "keyring.json"
    with caplog.at_level(logging.WARNING):
        first = load_keyring(None, None, env="development", dev_key_file=str(path))
    assert "LEDGERBRIDGE_KEYRING is not set" in caplog.text
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_keyring(None, None, env="development", dev_key_file=str(path))
    assert first.keys == second.keys and first.active == second.active


def test_repr_hides_keys() -> None:
    assert K1 not in repr(ring()) and "1111" not in repr(ring())
