"""`gpuvision compress` and `gpuvision export` as a user runs them: one JSON object on stdout, results other
commands accept, and every bad input a one-line error with exit code 2 and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import make_tree

from gpuvision.cli import main


def gv(*args):
    proc = subprocess.run([sys.executable, "-m", "gpuvision", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, cifar_model, cifar_subset):
    out = tmp_path_factory.mktemp("cli-compress") / "small"
    proc = gv("compress", cifar_model, "--data", cifar_subset, "--method", "int8", "--no-compile",
              "--latency-repeats", "3", "--out", out, "--json")
    return out, proc


def test_compress_json_and_the_variant_serves_other_commands(int8_run, cifar_subset, tmp_path):
    out, proc = int8_run
    report = json.loads(proc.stdout)
    assert report["schema_version"] == 1 and [v["name"] for v in report["variants"]] == ["original", "original-fast",
                                                                                         "int8"]
    assert (out / "report.md").exists() and (out / "report.png").exists() and "int8" in proc.stderr
    image = sorted((cifar_subset / "test" / "ship").glob("*"))[0]
    predicted = json.loads(gv("predict", out / "int8", image, "--json").stdout)
    classes = json.loads((out / "int8" / "manifest.json").read_text())["classes"]
    assert predicted["predictions"][0]["top"][0]["class"] in classes
    evaluated = json.loads(gv("evaluate", out / "int8", "--tta", "--json").stdout)
    assert 0.2 < evaluated["accuracy"] <= 1
    exported = json.loads(gv("export", out / "int8", "--format", "onnx", "--out", tmp_path / "m.onnx", "--json").stdout)
    assert exported["schema_version"] == 1 and (tmp_path / "m.onnx").exists()


def _bad(capsys, *args) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err, err
    return err


def test_bad_compress_input_exits_2_and_writes_nothing(capsys, tmp_path, cifar_model, cifar_subset, int8_run):
    other = make_tree(tmp_path / "other", classes=("apple", "pear"), per_class=4, size=(32, 32))
    out = tmp_path / "out"
    cases = [
        ([tmp_path, "--data", cifar_subset], "not a model directory"),
        ([cifar_model, "--data", cifar_subset, "--method", "shrink"], "--method"),
        ([cifar_model, "--data", cifar_subset, "--target-sparsity", "1.5"], "--target-sparsity"),
        ([cifar_model, "--data", cifar_subset, "--method", "distill", "--student", "fastnet"], "must be smaller"),
        ([cifar_model, "--data", cifar_subset, "--method", "distill", "--student", "vgg"], "invalid choice"),
        ([cifar_model, "--data", other, "--method", "int8"], "not the model's"),
        ([int8_run[0] / "int8", "--data", cifar_subset, "--method", "prune"], "onnx model"),
        ([cifar_model], "--data"),
    ]
    for args, message in cases:
        assert message in _bad(capsys, "compress", *args, "--out", out)
        assert not out.exists()


def test_bad_export_input_exits_2_and_writes_nothing(capsys, tmp_path, cifar_model, int8_run):
    cases = [
        ([int8_run[0] / "int8", "--format", "pt2", "--out", tmp_path / "m.pt2"], "only be exported as onnx"),
        ([cifar_model, "--format", "onnx", "--out", tmp_path / "m.pt2"], "must end in .onnx"),
        ([cifar_model, "--format", "tflite"], "--format"),
        ([tmp_path / "nothing", "--format", "onnx"], "no such model directory"),
        ([cifar_model, "--format", "onnx", "--opset", "3", "--out", tmp_path / "m.onnx"], "--opset"),
    ]
    for args, message in cases:
        assert message in _bad(capsys, "export", *args)
    assert list(tmp_path.iterdir()) == []
