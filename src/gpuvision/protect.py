"""Sign, verify, encrypt and decrypt model directories: what `gpuvision sign | verify | encrypt | decrypt` run.

    gpuvision sign runs/x --signing-key keys/signing.key       # adds runs/x/model.sig, nothing else
    gpuvision verify runs/x --pubkey keys/signing.pub          # one line; exit 2 unless intact and signed
    gpuvision encrypt runs/x --data-key keys/data.key          # -> runs/x-encrypted (then sign that)

Reading a signed or encrypted model needs none of this: `ModelDir.open(path, access)` checks the signature and
decrypts each file as it is read. New directories are written under a temporary name beside the target and renamed
into place, so a failure leaves nothing; the only file ever added to an existing model directory is model.sig.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from .artifact import (
    MANIFEST,
    SIGNATURE,
    Encryption,
    Manifest,
    ModelDir,
    associated_data,
    bound_digest,
    check_outside_models,
)
from .config import Access
from .crypto import aead, keys, signing
from .errors import BadInput, IntegrityError, UserError, require
from .files import OutputLock, atomic_write, umask, write_json


def sign_model(model_dir: str, signing_key: str, overwrite: bool = False) -> dict:
    """Add model.sig, the OpenSSF model signature of every file, to an intact model directory (locked meanwhile: of
    two signers at once, the second is refused instead of both reporting success)."""
    model = ModelDir.open(model_dir)
    with OutputLock(model.path, str(model.path)):
        return _sign(model, signing_key, overwrite)


def _sign(model: ModelDir, signing_key: str, overwrite: bool) -> dict:
    model.verify()  # a signature vouches for the files the manifest lists: sign only an intact model
    target = model.path / SIGNATURE
    require(overwrite or not (target.exists() or target.is_symlink()), f"{target} exists; add --overwrite to sign "
            "again (e.g. with a new key)", BadInput)
    with tempfile.TemporaryDirectory() as tmp:  # a signature and a public key: nothing secret goes here
        signature, public = Path(tmp) / SIGNATURE, Path(tmp) / keys.PUBLIC_KEY
        signing.sign_directory(model.path, signing_key, signature)
        public.write_bytes(keys.public_key_pem(signing_key))
        model.check_signature(str(public), signature)  # the library hashed the files itself: it signed what we checked
        blob = signature.read_bytes()
    try:
        atomic_write(target, lambda p: Path(p).write_bytes(blob))
    except OSError as e:
        raise UserError(f"{model.path}: cannot write {SIGNATURE} there ({e.strerror})") from e
    return {"schema_version": 1, "model_dir": str(model.path), "signature": str(target),
            "files": len(model.manifest.files) + 1, "version": model.version}


def verify_model(model_dir: str, access: Access) -> dict:
    """Check that every file is intact and that model.sig verifies with access.pubkey and signs exactly them (and,
    given the data key of an encrypted model, that every file decrypts)."""
    require(bool(access.pubkey), "verify needs --pubkey FILE: the public key the model must be signed with", BadInput)
    model = ModelDir.open(model_dir, access)
    model.verify()
    return {"schema_version": 1, "model_dir": str(model.path), "verified": True, "pubkey": access.pubkey,
            "files": len(model.manifest.files) + 1, "version": model.version, "encrypted": model.encrypted}


def encrypt_model(model_dir: str, out: str | None, access: Access) -> dict:
    """A new directory (default MODEL_DIR-encrypted) holding the model encrypted with the data key."""
    key = _data_key(access, "encrypt")
    source = ModelDir.open(model_dir, Access(pubkey=access.pubkey))
    require(not source.encrypted, f"{model_dir} is already encrypted", BadInput)
    target = encrypt_dir(source, _new(out, source.path, "-encrypted"), key)
    return {"schema_version": 1, "model_dir": str(source.path), "out": str(target), "key_id": aead.key_id(key),
            "files": len(source.manifest.files)}


def encrypt_dir(source: ModelDir, target: Path, key: bytes) -> Path:
    """Write `source` (plaintext) encrypted into the new directory `target`: each file under a fresh nonce, bound
    to the manifest and its name; the manifest stays readable and records each plaintext's sha256."""
    encryption = Encryption(aead.SCHEME, aead.key_id(key), dict(source.manifest.files))
    manifest = replace(source.manifest, encryption=encryption)
    bound = bound_digest(manifest.to_dict())  # `files` is left out of it, so it may change below
    return write_model(target, manifest, {name: aead.seal(key, source.read(name), associated_data(bound, name))
                                          for name in source.manifest.files})


def decrypt_model(model_dir: str, out: str | None, access: Access) -> dict:
    """A new directory (default MODEL_DIR-decrypted) holding the model as it was before `encrypt`, manifest byte for
    byte; or, for an exported OUT.enc file, the file OUT."""
    if Path(model_dir).is_file():
        return _decrypt_file(Path(model_dir), out, _data_key(access, "decrypt"))
    source = ModelDir.open(model_dir, access)
    require(source.encrypted, f"{model_dir} is not encrypted", BadInput)
    plain = {name: source.read(name) for name in source.manifest.files}
    expected = source.manifest.encryption.plaintext
    require(all(hashlib.sha256(blob).hexdigest() == expected[name] for name, blob in plain.items()),
            f"{model_dir}: a decrypted file differs from the sha256 its manifest records", IntegrityError)
    target = _new(out, source.path, "-decrypted")
    write_model(target, replace(source.manifest, encryption=None), plain)
    return {"schema_version": 1, "model_dir": str(source.path), "out": str(target), "files": len(plain)}


def _decrypt_file(path: Path, out: str | None, key: bytes) -> dict:
    require(bool(out) or path.suffix == ".enc", f"{path}: give --out FILE (an encrypted export ends in .enc)",
            BadInput)
    target = Path(out) if out else path.with_suffix("")
    require(not (target.exists() or target.is_symlink()), f"--out {target} exists; nothing is overwritten",
            BadInput)
    plain = aead.unseal(key, path.read_bytes(), aead.EXPORTED, str(path))
    atomic_write(target, lambda p: Path(p).write_bytes(plain))
    return {"schema_version": 1, "model_dir": str(path), "out": str(target), "files": 1}


def _data_key(access: Access, command: str) -> bytes:
    key = keys.read_data_key(access.data_key)
    require(key is not None, f"{command} needs the data key: --data-key FILE or ${keys.DATA_KEY_ENV} (`gpuvision keys "
            "generate` makes one)", BadInput)
    return key


def _new(out: str | None, source: Path, suffix: str) -> Path:
    """The new directory to write: absent, or empty (as a run killed before its rename leaves it)."""
    target = Path(out) if out else source.parent / f"{source.name}{suffix}"
    empty = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
    require(empty or not (target.exists() or target.is_symlink()), f"--out {target} exists; nothing is overwritten: "
            "choose another --out", BadInput)
    check_outside_models(target)
    return target


def write_model(target: Path, manifest: Manifest, blobs: dict[str, bytes]) -> Path:
    """A new model directory of `blobs` {name: bytes} and the manifest (its `files` hashed from them), written
    under a temporary name beside `target` and renamed into place. `target` is locked meanwhile (made empty, then
    replaced by the rename): a second writer of the same directory is refused in one line."""
    with OutputLock(target):
        require(not any(target.iterdir()), f"--out {target} exists; nothing is overwritten: choose another --out",
                BadInput)
        return _write_model(target, manifest, blobs)


def _write_model(target: Path, manifest: Manifest, blobs: dict[str, bytes]) -> Path:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        raise UserError(f"--out {target}: cannot write there ({e.strerror})") from e
    try:
        for name, blob in blobs.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(blob)
        manifest = replace(manifest, files={name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()})
        write_json(tmp / MANIFEST, manifest.to_dict())
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it owner-only; the result reads like any other directory
        os.rename(tmp, target)  # over the empty, locked target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
