"""Where commands write (issue 22): never inside a model directory, at any depth; one writer at a time per output
(the lock every writer takes); an unwritable --out is one line. Each refusal is `error: ...`, exit 2, nothing
written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import snapshot

from gpuvision.artifact import ModelDir
from gpuvision.cli import main
from gpuvision.config import Access
from gpuvision.files import OutputLock

SRC = Path(__file__).resolve().parents[2] / "src"


def refused(capsys, *args) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and last.startswith("error:") and "Traceback" not in err, (args, code, err[-2000:])
    return last


@pytest.fixture()
def model(tiny_model, tmp_path) -> Path:
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    return copy


def test_no_command_writes_inside_a_model_directory_at_any_depth(model, capsys, tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    key = tmp_path / "data.key"
    key.write_text("ab" * 32)
    key.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    before = snapshot(model)
    deep = model / "a" / "b"
    for args in (["evaluate", model, "--out", model / "report"], ["evaluate", model, "--out", deep],
                 ["export", model, "--out", model / "exp" / "model.onnx"],
                 ["encrypt", model, "--data-key", key, "--out", model / "enc"],
                 ["train", "--data", "digits", "--epochs", "1", "--out", model / "run"],
                 ["compress", model, "--data", "digits", "--method", "int8", "--out", deep],
                 ["demo", "--out", model / "demo"]):
        assert "lies inside the model directory" in refused(capsys, *args), args
        assert snapshot(model) == before, args
    ModelDir.open(model)  # still a model directory every reader accepts


def test_a_second_writer_of_the_same_output_is_refused_while_the_first_holds_it(model, capsys, tmp_path):
    pytest.importorskip("model_signing")
    from gpuvision.crypto.keys import generate

    keys = generate(tmp_path / "keys")
    out = tmp_path / "compressed"
    with OutputLock(out):  # another gpuvision process writing there (flock: a second open file is another holder)
        assert "in use by another gpuvision run" in refused(capsys, "compress", model, "--data", "digits",
                                                            "--method", "int8", "--out", out, "--overwrite")
        assert not any(out.iterdir())
    with OutputLock(model, str(model)):  # sign --overwrite by another key, at the same time
        assert "in use" in refused(capsys, "sign", model, "--signing-key", keys["signing.key"])
    assert not (model / "model.sig").exists()


def test_two_encrypts_into_one_out_at_once_one_wins_the_other_is_one_line(model, tmp_path):
    pytest.importorskip("cryptography")
    key = tmp_path / "data.key"
    key.write_text("cd" * 32)
    key.chmod(0o600)
    out = tmp_path / "enc"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "gpuvision", "encrypt", str(model), "--data-key", str(key), "--out", str(out)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in runs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    [(_, _, err)] = [r for r in results if r[0] == 2]
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "in use" in err or "exists" in err
    opened = ModelDir.open(out, Access(data_key=str(key)))
    opened.verify()
    assert opened.encrypted and not [p for p in tmp_path.iterdir() if p.name.startswith(".enc.")]


def test_demo_into_an_unwritable_place_is_one_line(capsys):
    target = Path("/sys/gpuvision-demo-test")  # sysfs refuses new directories, even to root
    if not Path("/sys/kernel").is_dir() or target.exists():
        pytest.skip("needs a sysfs at /sys to stand for a read-only mount")
    assert "cannot create or open it" in refused(capsys, "demo", "--out", target)


def test_outputs_beside_a_model_are_still_fine(model, capsys, tmp_path):
    capsys.readouterr()
    assert main(["evaluate", str(model), "--no-plot", "--out", str(tmp_path / "report"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] > 0
