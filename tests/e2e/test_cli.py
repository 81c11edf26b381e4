"""The real CLI, as a user runs it: train, evaluate, predict, data inspect; --json; bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_tree, tar_of
from PIL import Image


def gv(*args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "gpuvision", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    proc = gv("train", "--data", "digits", "--out", out, "--json")
    return out, proc


def test_train_json_is_one_object_on_stdout(digits_run):
    out, proc = digits_run
    summary = json.loads(proc.stdout)  # nothing else on stdout
    assert summary["schema_version"] == 1 and summary["model_dir"] == str(out)
    assert summary["split"]["test"] > 0 and "epoch" in proc.stderr  # progress went to stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(lines) == manifest["recipe"]["epochs"] and "train_loss" in json.loads(lines[-1])
    assert summary["reference_accuracy"] == manifest["reference"]["accuracy"]


def test_digits_test_accuracy_and_report(digits_run):
    out, _ = digits_run
    report = json.loads(gv("evaluate", out, "--json").stdout)
    assert report["schema_version"] == 1 and report["split"] == "test" and report["tta"] is True
    assert report["accuracy"] >= 0.95, report["accuracy"]
    sizes = json.loads((out / "manifest.json").read_text())["split"]["sizes"]
    assert report["n"] == sizes["test"] and set(report["per_class"]) == {str(i) for i in range(10)}
    assert sum(c["support"] for c in report["per_class"].values()) == report["n"]
    assert set(report["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    reports = out.parent / f"{out.name}-eval"  # beside the model directory, never inside it
    assert report["report"] == str(reports / "test.json") and (reports / "test.json").exists()
    assert (reports / "test-confusion.png").read_bytes()[:4] == b"\x89PNG"
    plain = json.loads(gv("evaluate", out, "--no-tta", "--split", "val", "--json").stdout)
    assert plain["tta"] is False and plain["split"] == "val" and plain["n"] == sizes["val"]


def test_predict(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    out, _ = digits_run
    digits = load_digits()
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(path)
    result = json.loads(gv("predict", out, *paths, "--top-k", "2", "--json").stdout)
    assert result["schema_version"] == 1 and len(result["predictions"]) == 5
    assert sum(p["top"][0]["class"] == str(digits.target[i]) for i, p in enumerate(result["predictions"])) >= 4
    assert all(len(p["top"]) == 2 for p in result["predictions"])


def test_data_inspect(tmp_path):
    tree = make_tree(tmp_path / "tree", prefix="train", per_class=5)
    make_tree(tree, prefix="test", per_class=2)
    (tree / "train" / "cat" / "bad.png").write_bytes(b"garbage")
    info = json.loads(gv("data", "inspect", tar_of(tree, tmp_path / "t.tgz"), "--json").stdout)
    assert info["schema_version"] == 1 and info["classes"] == ["cat", "dog"]
    assert info["class_counts"] == {"cat": 7, "dog": 7} and info["skipped"] == ["train/cat/bad.png"]
    assert info["split_sizes"]["test"] == 4 and info["given_test_split"] is True


def _error(proc, words):
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and line.startswith("error:"), line
    assert words in line, line


def test_bad_input_is_one_line_and_exit_2(tmp_path, digits_run):
    out, _ = digits_run
    _error(gv("train", "--data", tmp_path / "missing", "--out", tmp_path / "a", check=False), "no such file")
    (tmp_path / "empty").mkdir()
    _error(gv("train", "--data", tmp_path / "empty", "--out", tmp_path / "b", check=False), "empty")
    _error(gv("train", "--model", "nope", "--out", tmp_path / "c", check=False), "invalid choice: 'nope'")
    _error(gv("train", "--bogus-flag", check=False), "unrecognized arguments")
    _error(gv("train", "--precision", "fp8", "--out", tmp_path / "d", check=False), "invalid choice: 'fp8'")
    _error(gv("train", "--out", out, check=False), "--overwrite")
    _error(gv("train", "--resume", "--out", tmp_path / "nothing", check=False), "nothing to resume")
    _error(gv("train", "--device", "cuda", "--out", tmp_path / "e", check=False), "no CUDA")
    (tmp_path / "x.png").write_text("not an image")
    _error(gv("predict", out, tmp_path / "x.png", check=False), "not an image")
    _error(gv("evaluate", tmp_path, check=False), "not a model directory")
    assert not any((tmp_path / n).exists() for n in "abcde")  # nothing half-written


def test_config_file_and_flags_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: digits\nepochs: 1.5\nval-fraction: 0.0\nseed: 7\n")
    out = tmp_path / "run"
    summary = json.loads(gv("train", "--config", config, "--seed", "8", "--out", out, "--json").stdout)
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["epochs"] == 1.5 and settings["seed"] == 8 and settings["val_fraction"] == 0.0
    assert summary["split"]["val"] == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochz": 3}')
    _error(gv("train", "--config", bad, check=False), "unknown setting")


def test_changed_source_refuses_recorded_split_but_all_works(tmp_path):
    tree = make_tree(tmp_path / "tree", per_class=10, size=(12, 12))
    out = tmp_path / "run"
    gv("train", "--data", tree, "--epochs", "1", "--out", out)
    make_tree(tree, classes=("cat",), per_class=12, size=(12, 12))  # two more cat images
    _error(gv("evaluate", out, check=False), "changed since the model was trained")
    # compress resolves the same recorded split: a changed source is refused, never split again (issue 22, case 13)
    _error(gv("compress", out, "--data", tree, "--method", "int8", check=False), "changed since the model was trained")
    report = json.loads(gv("evaluate", out, "--split", "all", "--json").stdout)
    assert report["n"] == 22 and report["split"] == "all"
