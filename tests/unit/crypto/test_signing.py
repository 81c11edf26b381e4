"""Signatures in the OpenSSF model-signing format: what the library signs is every file's sha256; a bundle that
does not verify with the given key, whatever is wrong with it, is one IntegrityError."""

from __future__ import annotations

import hashlib

import pytest

from gpuvision.crypto.keys import generate
from gpuvision.crypto.signing import SIGNATURE, sign_directory, signed_digests
from gpuvision.errors import IntegrityError

pytest.importorskip("model_signing")


def test_signed_digests_are_every_files_sha256(tmp_path):
    keys, other = generate(tmp_path / "k"), generate(tmp_path / "o")
    model = tmp_path / "m"
    (model / "sub").mkdir(parents=True)
    files = {"a.bin": b"\x00\x01" * 1000, "sub/b.json": b"{}", "manifest.json": b'{"x": 1}'}
    for name, blob in files.items():
        (model / name).write_bytes(blob)
    sign_directory(model, str(keys["signing.key"]), model / SIGNATURE)
    assert signed_digests(model / SIGNATURE, str(keys["signing.pub"])) == {
        name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}
    with pytest.raises(IntegrityError, match="does not verify"):
        signed_digests(model / SIGNATURE, str(other["signing.pub"]))
    bundle = (model / SIGNATURE).read_text()
    for broken in (bundle.replace('"sig":"', '"sig":"AAAA'), "{}", "not json", bundle[: len(bundle) // 2]):
        (model / SIGNATURE).write_text(broken)
        with pytest.raises(IntegrityError, match="does not verify") as caught:
            signed_digests(model / SIGNATURE, str(keys["signing.pub"]))
        assert "\n" not in str(caught.value)
