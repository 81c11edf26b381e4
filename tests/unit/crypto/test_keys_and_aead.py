"""Keys are owner-only and never overwritten; the data key comes from a file or the environment and is checked;
AES-256-GCM returns the plaintext or one IntegrityError, never anything else."""

from __future__ import annotations

import stat

import pytest

from gpuvision.crypto import aead
from gpuvision.crypto.keys import DATA_KEY_ENV, check_private_key, check_public_key, generate, read_data_key
from gpuvision.errors import BadInput, IntegrityError, NotFound

pytest.importorskip("cryptography")


@pytest.fixture
def keys(tmp_path):
    return generate(tmp_path / "keys")


def test_generate_writes_three_owner_only_files_and_never_overwrites(tmp_path, keys):
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys.values())
    check_private_key(str(keys["signing.key"]))
    check_public_key(str(keys["signing.pub"]))
    before = {p: p.read_bytes() for p in keys.values()}
    keys["data.key"].unlink()  # one file missing is still a refusal: the other two would be replaced
    with pytest.raises(BadInput, match="never overwritten"):
        generate(tmp_path / "keys")
    assert not keys["data.key"].exists() and all(p.read_bytes() == before[p] for p in keys.values() if p.exists())


def test_data_key_from_file_then_environment(tmp_path, keys, monkeypatch):
    monkeypatch.delenv(DATA_KEY_ENV, raising=False)
    assert read_data_key(None) is None
    key = read_data_key(str(keys["data.key"]))
    assert len(key) == 32
    monkeypatch.setenv(DATA_KEY_ENV, "ab" * 32)
    assert read_data_key(None) == bytes([0xAB]) * 32 and read_data_key(str(keys["data.key"])) == key
    for bad in ("ab" * 31, "zz" * 32, "ab" * 33):
        monkeypatch.setenv(DATA_KEY_ENV, bad)
        with pytest.raises(BadInput, match="64 hex characters") as caught:
            read_data_key(None)
        assert bad not in str(caught.value)  # a key, even a wrong one, is never printed
    with pytest.raises(NotFound, match="no such file"):
        read_data_key("ab" * 32)  # a key given where its file is expected


def test_keys_model_signing_cannot_use_are_refused_in_one_line(tmp_path):
    from cryptography.hazmat.primitives import serialization as pem
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    plain = pem.NoEncryption()
    for name, key in (("ed25519", ed25519.Ed25519PrivateKey.generate()),
                      ("rsa", rsa.generate_private_key(65537, 2048)),
                      ("secp256k1", ec.generate_private_key(ec.SECP256K1()))):
        path = tmp_path / f"{name}.key"
        path.write_bytes(key.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, plain))
        with pytest.raises(BadInput, match="not an elliptic-curve key"):
            check_private_key(str(path))
    locked = tmp_path / "locked.key"
    locked.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.BestAvailableEncryption(b"secret")))
    with pytest.raises(BadInput, match="password"):
        check_private_key(str(locked))
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(BadInput, match="not a PEM public key"):
        check_public_key(str(tmp_path / "junk.pub"))


def test_seal_round_trips_with_a_fresh_nonce_and_refuses_any_change():
    key, other = bytes(range(32)), bytes(32)
    sealed = aead.seal(key, b"weights" * 100, b"manifest+name")
    assert aead.unseal(key, sealed, b"manifest+name", "x") == b"weights" * 100
    assert aead.seal(key, b"weights" * 100, b"manifest+name") != sealed  # a fresh nonce every time
    flipped = bytearray(sealed)
    flipped[-20] ^= 1
    for blob, bound, k in ((bytes(flipped), b"manifest+name", key), (sealed, b"manifest+other", key),
                           (sealed, b"manifest+name", other)):
        with pytest.raises(IntegrityError, match="does not decrypt"):
            aead.unseal(k, blob, bound, "x")
    for blob in (b"", sealed[:30], b"PK\x03\x04" + sealed):
        with pytest.raises(IntegrityError, match="not encrypted by gpuvision"):
            aead.unseal(key, blob, b"manifest+name", "x")
    assert aead.key_id(key) != aead.key_id(other) and len(aead.key_id(key)) == 16
