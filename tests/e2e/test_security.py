"""Keep models and data safe (issue 12): keys, OpenSSF signatures the stock tool accepts, AES-256-GCM encryption that
never puts decrypted weights on a disk, and the hostile corpus run against every reader. Each refusal is one line
`error: ...`, exit 2, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import image_bytes
from hostile import (
    data_source_cases,
    encryption_cases,
    evil_marker,
    image_cases,
    model_dir_cases,
    signature_cases,
    snapshot,
)

import gpuvision
from gpuvision.artifact import ModelDir
from gpuvision.cli import main
from gpuvision.config import Access
from gpuvision.crypto import aead
from gpuvision.crypto.keys import DATA_KEY_ENV, generate
from gpuvision.protect import encrypt_model, sign_model

pytest.importorskip("model_signing")

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny trained model; two sets of keys; the model signed, and encrypted then signed."""
    root = tmp_path_factory.mktemp("security")
    model = root / "tiny"
    gpuvision.train(data="digits", out=str(model), device="cpu", precision="fp32", epochs=1, eval_every=0,
                    checkpoint_every=0, model_args={"widths": [8, 8, 8]})
    keys, other = generate(root / "keys"), generate(root / "other-keys")
    signed = root / "signed"
    shutil.copytree(model, signed)
    sign_model(str(signed), str(keys["signing.key"]))
    encrypted = Path(encrypt_model(str(model), str(root / "encrypted"), Access(data_key=str(keys["data.key"])))["out"])
    sign_model(str(encrypted), str(keys["signing.key"]))
    image = root / "seven.png"
    image.write_bytes(image_bytes(7, (8, 8), mode="L"))
    return SimpleNamespace(root=root, model=model, keys=keys, other=other, signed=signed, encrypted=encrypted,
                           image=image, pub=str(keys["signing.pub"]), data_key=str(keys["data.key"]))


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch):
    monkeypatch.delenv(DATA_KEY_ENV, raising=False)


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args) -> str:
    """The CLI in this process must exit 2 with its last stderr line `error: ...` and no traceback."""
    code, _, err = run(capsys, *args)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and last.startswith("error:") and "Traceback" not in err, (args, code, err[-2000:])
    return last


def stock_verify(directory: Path, pub: str) -> subprocess.CompletedProcess:
    """The OpenSSF tool itself, exactly as its documentation runs it."""
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(directory), "--public_key", pub,
                           "--signature", str(directory / "model.sig")], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- keys and signatures


def test_keys_are_owner_only_and_never_overwritten(capsys, tmp_path):
    out = tmp_path / "k"
    code, stdout, _ = run(capsys, "keys", "generate", "--out", out, "--json")
    paths = json.loads(stdout)
    assert code == 0 and stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("signing.key", "signing.pub", "data.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert (out / "signing.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert len((out / "data.key").read_text().strip()) == 64 and paths["data_key"] == str(out / "data.key")
    before = snapshot(out)
    assert "never overwritten" in refused(capsys, "keys", "generate", "--out", out)
    assert snapshot(out) == before


def test_the_stock_openssf_verifier_accepts_gpuvision_signatures_and_rejects_any_changed_byte(lab, capsys,
                                                                                              tmp_path):
    assert sorted(p.name for p in lab.signed.iterdir()) == sorted([p.name for p in lab.model.iterdir()] + ["model.sig"])
    for directory in (lab.signed, lab.encrypted):
        proc = stock_verify(directory, lab.pub)
        assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stderr
    for name in ("manifest.json", "model.safetensors", "split.json", "metrics.jsonl"):
        copy = tmp_path / name
        shutil.copytree(lab.signed, copy)
        blob = bytearray((copy / name).read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(blob))
        assert stock_verify(copy, lab.pub).returncode != 0, name
        assert refused(capsys, "verify", copy, "--pubkey", lab.pub)
    assert stock_verify(lab.signed, str(lab.other["signing.pub"])).returncode != 0


def test_verify_prints_one_line_and_sign_adds_only_model_sig(lab, capsys, tmp_path):
    code, out, err = run(capsys, "verify", lab.signed, "--pubkey", lab.pub)
    assert code == 0 and out.count("\n") == 1 and out.startswith(f"verified: {lab.signed} is intact and signed")
    assert "does not verify" in refused(capsys, "verify", lab.signed, "--pubkey", lab.other["signing.pub"])
    assert "--pubkey" in refused(capsys, "verify", lab.signed)
    assert "exists" in refused(capsys, "sign", lab.signed, "--signing-key", lab.keys["signing.key"])
    from cryptography.hazmat.primitives import serialization as pem
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ed25519 = tmp_path / "ed25519.key"
    ed25519.write_bytes(Ed25519PrivateKey.generate().private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8,
                                                                   pem.NoEncryption()))
    copy = tmp_path / "m"
    shutil.copytree(lab.model, copy)
    assert "elliptic-curve" in refused(capsys, "sign", copy, "--signing-key", ed25519)
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in lab.model.iterdir())


# ---------------------------------------------------------------- encryption


def test_encrypt_and_decrypt_round_trip_and_the_key_never_on_the_command_line(lab, capsys, tmp_path, monkeypatch):
    key = bytes.fromhex(Path(lab.data_key).read_text())
    manifest = json.loads((lab.encrypted / "manifest.json").read_text())
    assert manifest["encryption"]["key_id"] == aead.key_id(key) and manifest["classes"] == [str(i) for i in range(10)]
    for name in ("model.safetensors", "split.json", "metrics.jsonl"):
        plain, sealed = (lab.model / name).read_bytes(), (lab.encrypted / name).read_bytes()
        assert not any(plain[i : i + 64] in sealed for i in range(0, len(plain) - 63, 32)), name
    pixels = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    expected = gpuvision.load(lab.model, device="cpu").logits(pixels)
    assert np.array_equal(gpuvision.load(lab.encrypted, device="cpu", access=Access(data_key=lab.data_key))
                          .logits(pixels), expected)
    monkeypatch.setenv(DATA_KEY_ENV, key.hex())  # the other way to give the key
    assert np.array_equal(gpuvision.load(lab.encrypted, device="cpu").logits(pixels), expected)
    monkeypatch.delenv(DATA_KEY_ENV)
    back = tmp_path / "back"
    assert run(capsys, "decrypt", lab.encrypted, "--data-key", lab.data_key, "--out", back)[0] == 0
    assert snapshot(back).keys() == snapshot(lab.model).keys()
    assert all((back / n).read_bytes() == (lab.model / n).read_bytes() for n in snapshot(back))  # manifest too
    assert "no such file" in refused(capsys, "evaluate", lab.encrypted, "--data-key", key.hex())
    assert "already encrypted" in refused(capsys, "encrypt", lab.encrypted, "--data-key", lab.data_key)
    assert "exists" in refused(capsys, "encrypt", lab.model, "--data-key", lab.data_key, "--out", back)
    assert "needs the data key" in refused(capsys, "encrypt", lab.model, "--out", tmp_path / "x")
    monkeypatch.setenv(DATA_KEY_ENV, "00" * 31)
    assert "64 hex characters" in refused(capsys, "evaluate", lab.encrypted)


def weight_blocks(arrays: list[bytes]) -> set[bytes]:
    """32-byte blocks of the weights at 32-byte steps: a file holding any 64-byte run of them holds one whole.
    Blocks of few distinct bytes (zeros, batch-norm's ones) are in every model, so they are left out."""
    return {a[i : i + 32] for a in arrays for i in range(0, len(a) - 31, 32) if len(set(a[i : i + 32])) >= 16}


def tensor_bytes(safetensors_file: Path) -> bytes:
    blob = safetensors_file.read_bytes()
    return blob[8 + int.from_bytes(blob[:8], "little") :]  # the tensors, after the JSON header


def test_export_of_an_encrypted_model_is_encrypted_unless_plaintext(lab, capsys, tmp_path):
    import onnx

    code, out, _ = run(capsys, "export", lab.encrypted, "--data-key", lab.data_key, "--out", tmp_path / "m.onnx",
                       "--parity-images", "20", "--json")
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "m.onnx.enc")
    assert not (tmp_path / "m.onnx").exists()
    assert run(capsys, "decrypt", tmp_path / "m.onnx.enc", "--data-key", lab.data_key)[0] == 0
    onnx.checker.check_model(onnx.load_model(str(tmp_path / "m.onnx")))
    assert "does not decrypt" in refused(capsys, "decrypt", tmp_path / "m.onnx.enc", "--data-key",
                                         lab.other["data.key"], "--out", tmp_path / "x.onnx")
    code, out, _ = run(capsys, "export", lab.encrypted, "--data-key", lab.data_key, "--plaintext", "--out",
                       tmp_path / "p.onnx", "--parity-images", "20", "--json")
    assert code == 0 and json.loads(out)["encrypted"] is False
    onnx.checker.check_model(onnx.load_model(str(tmp_path / "p.onnx")))
    # the control for the scan below: a plaintext ONNX file holds the weights' bytes as they are
    plain = (tmp_path / "p.onnx").read_bytes()
    assert any(b in plain for b in weight_blocks([tensor_bytes(lab.model / "model.safetensors")]))


SCAN = """
import logging
import sys
import numpy as np
import gpuvision
from gpuvision.cli import main

logging.basicConfig(level=logging.INFO)
encrypted, out = sys.argv[1], sys.argv[2]
for backend in ("inductor", "onnxruntime", "eager"):
    gpuvision.load(encrypted, device="cpu", backend=backend).logits(np.zeros((2, 1, 8, 8), np.uint8))
assert main(["export", encrypted, "--out", out + "/export/model.onnx", "--parity-images", "20"]) == 0
assert main(["export", encrypted, "--format", "pt2", "--out", out + "/export/model.pt2", "--parity-images", "20"]) == 0
assert main(["compress", encrypted, "--data", "digits", "--method", "int8", "--latency-repeats", "1",
             "--calibration-images", "64", "--out", out + "/compressed"]) == 0
"""


def test_an_encrypted_model_leaves_no_decrypted_weights_on_disk(lab, tmp_path):
    """Load it on every backend (inductor falls back to eager), export it and compress it to int8 in a process
    whose temporary, cache and home directories are fresh; then nothing was compiled, no file there holds a 64-byte
    run of the weights, of the parent or of the int8 variant, and the in-memory workspace is gone."""
    import onnx
    from onnx import numpy_helper

    dirs = {name: tmp_path / name for name in ("tmp", "home", "cache", "gvcache", "cwd", "out")}
    for d in dirs.values():
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR")}
    env.update(TMPDIR=str(dirs["tmp"]), HOME=str(dirs["home"]), XDG_CACHE_HOME=str(dirs["cache"]),
               GPUVISION_CACHE=str(dirs["gvcache"]), **{DATA_KEY_ENV: Path(lab.data_key).read_text().strip()})
    workspaces = set(Path("/dev/shm").glob("gpuvision-*"))
    proc = subprocess.run([sys.executable, "-c", SCAN, str(lab.encrypted), str(dirs["out"])], cwd=dirs["cwd"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running it eager" in proc.stderr and set(Path("/dev/shm").glob("gpuvision-*")) == workspaces
    # inductor's cache (torch.export may create its folder): compiled code with frozen weights would be in there
    assert not [p for p in dirs["tmp"].glob("torchinductor_*/**/*") if p.is_file()]
    parent = tensor_bytes(lab.model / "model.safetensors")
    int8 = ModelDir.open(dirs["out"] / "compressed" / "int8", Access(data_key=lab.data_key)).read("model.onnx")
    arrays = [numpy_helper.to_array(t).tobytes() for t in onnx.load_model_from_string(int8).graph.initializer]
    blocks = weight_blocks([parent, *arrays])
    assert len(blocks) > 100
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 10  # the outputs and the decode cache at least
    leaks = [str(p) for p in files if any(b in p.read_bytes() for b in blocks)]
    assert not leaks
    assert (dirs["out"] / "export" / "model.onnx.enc").exists() and (dirs["out"] / "export" / "model.pt2.enc").exists()
    assert json.loads((dirs["out"] / "compressed" / "int8" / "manifest.json").read_text())["encryption"]


def _plaintext_files(roots: list[Path], blocks: set[bytes], since: float) -> list[str]:
    """Files under the roots (modified since `since`, at most 256 MiB) that hold a block of the weights."""
    found = []
    for root in roots:
        for base, _, names in os.walk(root):
            for name in names:
                path = Path(base) / name
                try:
                    st = path.lstat()
                    if stat.S_ISREG(st.st_mode) and st.st_mtime >= since and st.st_size <= 256 << 20:
                        data = path.read_bytes()
                        found += [str(path)] if any(b in data for b in blocks) else []
                except OSError:  # another process's file, gone meanwhile
                    continue
    return found


def _workspaces() -> set[Path]:
    return set(Path("/dev/shm").glob("gpuvision-*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_plaintext_weights_on_any_file_system_after_a_kill(lab, tmp_path, sig):
    """compress (of the encrypted model, to int8), encrypt and export run at once and are killed while compress's
    in-memory workspace holds decrypted weights (checked: the control); then no file in the temporary, cache, home,
    output or working directories, in /dev/shm or in the system's temporary directory holds a 64-byte run of the
    weights. SIGTERM: each cleans up and exits 143 with one line (or had finished); SIGKILL: the reaper removes the
    workspace as soon as compress is gone."""
    blocks = weight_blocks([tensor_bytes(lab.model / "model.safetensors")])
    assert len(blocks) > 20
    started, before = time.time() - 1, _workspaces()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR")}
    env.update(TMPDIR=str(tmp_path / "tmp"), HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
               **{DATA_KEY_ENV: Path(lab.data_key).read_text().strip()})
    for d in ("tmp", "home", "cache", "out"):
        (tmp_path / d).mkdir()
    out = tmp_path / "out"
    commands = {
        "compress": ["compress", lab.encrypted, "--data", "digits", "--method", "int8", "--no-compile",
                     "--latency-repeats", "1", "--calibration-images", "64", "--out", out / "compressed"],
        "export": ["export", lab.encrypted, "--out", out / "export" / "model.onnx", "--parity-images", "20"],
        "encrypt": ["encrypt", lab.model, "--out", out / "encrypted"],
    }
    runs = {name: subprocess.Popen([sys.executable, "-m", "gpuvision", *map(str, args)], cwd=out, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for name, args in commands.items()}
    deadline, held = time.monotonic() + 300, []
    while not held and runs["compress"].poll() is None and time.monotonic() < deadline:
        held = _plaintext_files(sorted(_workspaces() - before), blocks, started)
        time.sleep(0.02)
    for process in runs.values():
        if process.poll() is None:
            process.send_signal(sig)
    results = {name: (p.wait(120), p.stderr.read()) for name, p in runs.items()}
    assert held, f"compress ended before its workspace held the weights: {results['compress']}"
    for name, (code, err) in results.items():
        if sig == signal.SIGKILL:
            assert code in (0, -signal.SIGKILL), (name, code, err[-2000:])
        else:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            # finished first, cleaned up and exited 143, or was still starting (nothing written yet)
            assert code in (0, -signal.SIGTERM) or (code == 143 and last == "error: terminated (SIGTERM)"), \
                (name, code, err[-2000:])
            assert "Traceback" not in err, (name, err[-3000:])
    assert results["compress"][0] in (143, -signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert not (out / "compressed").exists()  # the half-written output is removed too
    deadline = time.monotonic() + 10
    while _workspaces() - before and time.monotonic() < deadline:  # SIGKILL: the reaper's moment
        time.sleep(0.05)
    assert not _workspaces() - before
    leaks = _plaintext_files([tmp_path, Path("/dev/shm"), Path(tempfile.gettempdir())], blocks, started)
    assert not leaks


# ---------------------------------------------------------------- the hostile corpus against every reader


def readers(directory: Path, image: Path, *access) -> dict[str, list]:
    """Every command that reads a model directory, as a user runs it (outputs in their default places)."""
    return {
        "evaluate": ["evaluate", directory, "--no-plot", *access],
        "predict": ["predict", directory, image, *access],
        "export": ["export", directory, "--parity-images", "10", *access],
        "compress": ["compress", directory, "--data", "digits", "--method", "int8", "--no-compile",
                     "--latency-repeats", "1", *access],
    }


def all_refused(capsys, root: Path, cases, commands) -> None:
    """Each case, each command: one line naming the problem, exit 2, nothing left anywhere under root or the
    working directory (root), and never the pickled payload run."""
    for name, path, words in cases:
        for command, args in commands(path).items():
            before = snapshot(root)
            line = refused(capsys, *args)
            assert all(w in line for w in words) or command == "verify", (name, command, line)
            assert snapshot(root) == before, (name, command)
    assert not evil_marker(root).exists()


def test_hostile_model_directories_are_refused_by_every_reader(lab, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = model_dir_cases(lab.signed, tmp_path / "corpus")
    all_refused(capsys, tmp_path, cases, lambda d: {**readers(d, lab.image), "verify": ["verify", d, "--pubkey",
                                                                                       lab.pub]})


def test_what_the_pubkey_did_not_sign_is_refused_by_every_reader(lab, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = signature_cases(lab.signed, lab.keys, lab.other["signing.key"], tmp_path / "corpus")
    all_refused(capsys, tmp_path, cases, lambda d: {**readers(d, lab.image, "--pubkey", lab.pub),
                                                    "verify": ["verify", d, "--pubkey", lab.pub]})
    assert run(capsys, "predict", lab.signed, lab.image, "--pubkey", lab.pub)[0] == 0  # signed, it is accepted
    assert run(capsys, "evaluate", lab.signed, "--no-plot", "--pubkey", lab.pub, "--out", tmp_path / "r")[0] == 0


def test_a_wrong_key_or_a_changed_bit_is_one_error_never_garbage_weights(lab, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = encryption_cases(lab.encrypted, tmp_path / "corpus")
    all_refused(capsys, tmp_path, cases, lambda d: readers(d, lab.image, "--data-key", lab.data_key))
    wrong = [("wrong key", lab.encrypted, ("another data key",))]
    all_refused(capsys, tmp_path, wrong, lambda d: readers(d, lab.image, "--data-key", lab.other["data.key"]))
    all_refused(capsys, tmp_path, [("no key", lab.encrypted, ("is encrypted",))], lambda d: readers(d, lab.image))


def test_hostile_images_are_refused_by_predict(lab, capsys, tmp_path):
    for name, blob, words in image_cases():
        path = tmp_path / name
        path.write_bytes(blob)
        line = refused(capsys, "predict", lab.model, path)
        assert all(w in line for w in words) and name in line, (name, line)


def test_hostile_data_sources_are_refused_by_train_and_inspect(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = data_source_cases(tmp_path / "corpus")
    out = tmp_path / "run"
    all_refused(capsys, tmp_path, cases, lambda src: {
        "train": ["train", "--data", src, "--out", out, "--epochs", "1", "--device", "cpu"],
        "inspect": ["data", "inspect", src]})
