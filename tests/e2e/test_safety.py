"""Nothing is lost and nothing unverified is trusted (issue 9, the training and model-directory cases): each case
is a real command on a real directory, and each refusal is one line `error: ...` with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import image_bytes, make_tree

import gpuvision
from gpuvision.cli import main
from gpuvision.errors import UserError
from gpuvision.train.run_dir import MARKER, RunLock

QUICK = ["--epochs", "1", "--device", "cpu", "--precision", "fp32", "--eval-every", "0"]


def refused(capsys, *args) -> str:
    """Run the CLI in this process; it must exit 2 with its last stderr line `error: ...` (progress lines may come
    before it) and no traceback."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert code == 2 and last.startswith("error:") and "Traceback" not in err, err
    return last


@pytest.fixture
def tree(tmp_path):
    root = make_tree(tmp_path / "data", per_class=8, size=(12, 12))
    (root / "notes.txt").write_text("my notes")
    return root


def _snapshot(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_out_that_is_inside_or_contains_the_data_is_refused(capsys, tree, tmp_path):
    before = _snapshot(tree)
    for out in (tree, tree / "cat", tmp_path):
        assert "data source" in refused(capsys, "train", "--data", tree, "--out", out, "--overwrite", *QUICK)
    assert _snapshot(tree) == before


def test_overwrite_replaces_only_what_gpuvision_wrote(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert "not a directory gpuvision wrote" in refused(capsys, "train", "--out", mine, "--overwrite", *QUICK)
    assert "not a demo directory" in refused(capsys, "demo", "--out", mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    assert "is a file" in refused(capsys, "train", "--out", tmp_path / "file", *QUICK)
    assert "cannot create" in refused(capsys, "train", "--out", "/proc/gpuvision-test", *QUICK)


def test_a_second_run_into_a_locked_directory_gets_a_clear_error(tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out)
    lock.acquire()
    try:
        with pytest.raises(UserError, match="in use by another gpuvision run"):
            gpuvision.train(data="digits", out=str(out), epochs=1, device="cpu", eval_every=0)
    finally:
        lock.release()


def test_resume_refuses_a_changed_source_and_changed_settings(capsys, tree, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--data", str(tree), "--out", str(out), "--epochs", "3", "--checkpoint-every", "1",
                 "--device", "cpu"])
    assert code == 0
    # A finished run keeps no checkpoints: make it resumable the way a killed run would be.
    manifest = json.loads((out / "manifest.json").read_text())
    assert not (out / "checkpoints").exists() and not (out / MARKER).exists()
    interrupted = tmp_path / "interrupted"
    gpuvision.train(data=str(tree), out=str(interrupted), epochs=3, checkpoint_every=1, device="cpu",
                    keep_checkpoints=True)
    (interrupted / "manifest.json").unlink()
    assert "--epochs" in refused(capsys, "train", "--out", interrupted, "--resume", "--epochs", "5")
    make_tree(tree, classes=("cat",), per_class=9, size=(12, 12))  # one more cat image
    assert "changed since the run started" in refused(capsys, "train", "--out", interrupted, "--resume")
    assert manifest["settings"]["data"] == str(tree.resolve())  # recorded absolute


def test_a_damaged_checkpoint_on_resume_is_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    gpuvision.train(data="digits", out=str(out), epochs=2, checkpoint_every=1, device="cpu", keep_checkpoints=True,
                    model_args={"widths": [8, 8, 8]})
    (out / "manifest.json").unlink()
    next((out / "checkpoints").glob("epoch-0001*/state.safetensors")).write_bytes(b"\0" * 10)
    assert "damaged" in refused(capsys, "train", "--out", out, "--resume")


def test_divergence_fails_clearly_and_writes_no_model(capsys, tmp_path):
    out = tmp_path / "run"
    assert "diverged" in refused(capsys, "train", "--out", out, "--lr", "1000000", "--epochs", "2",
                                 "--checkpoint-every", "1", "--device", "cpu")
    assert not (out / "manifest.json").exists()


def test_non_finite_steps_are_skipped_then_stop_the_run_with_a_good_checkpoint(monkeypatch, tmp_path):
    """From step 25 on every loss is NaN: those steps are skipped; past --max-nonfinite the run stops at the end of
    epoch 2 (steps 21-40: 16 skipped), and the checkpoint of epoch 1 (20 steps) is intact and finite."""
    from safetensors.torch import load_file

    from gpuvision.errors import UserError
    from gpuvision.train.recipes.fast import FastRecipe

    calls = {"n": 0}
    loss = FastRecipe.loss

    def poisoned(self, logits, labels, inputs):
        calls["n"] += 1
        return loss(self, logits, labels, inputs) * (float("nan") if calls["n"] > 24 else 1.0)

    monkeypatch.setattr(FastRecipe, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"16 steps had non-finite gradients .* --max-nonfinite 3"):
        gpuvision.train(data="digits", out=str(out), epochs=3, checkpoint_every=1, max_nonfinite=3, device="cpu",
                        precision="fp32", model_args={"widths": [8, 8, 8]})
    (checkpoint,) = (out / "checkpoints").glob("epoch-0001*")
    state = load_file(checkpoint / "state.safetensors")
    assert all(v.isfinite().all() for v in state.values() if v.is_floating_point())
    assert not (out / "manifest.json").exists()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1] and epochs[0]["nonfinite_steps"] == 0


def test_bad_settings_and_bad_model_args_exit_2(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: ten\n")
    assert "--epochs must be float" in refused(capsys, "train", "--config", config, "--out", tmp_path / "a")
    config.write_text("model_args: {bogus: 1}\nepochs: 1\n")
    assert "does not take the arguments" in refused(capsys, "train", "--config", config, "--out", tmp_path / "b")
    # issue 22, case 16: every nested setting is checked before anything is written (each was a traceback)
    for text, words in [("recipe_args: {lr: 0.1}", "a setting of its own"),
                        ("recipe_args: {label_smoothing: 5}", "label_smoothing must be in [0, 1]"),
                        ("recipe_args: {momentum: yes}", "momentum must be float"),
                        ("model_args: {num_classes: 3}", "set from the data"),
                        ("model_args: {widths: [100000, 100000, 100000]}", "more than the"),
                        ("recipe: distill\nrecipe_args: {teacher: x, alpha: '0.5'}", "alpha must be float")]:
        config.write_text(text + "\nepochs: 1\n")
        assert words in refused(capsys, "train", "--config", config, "--out", tmp_path / "c"), text
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.parametrize("manifest, words", [("[]", "JSON object"), ("null", "JSON object"), ("{", "not valid JSON")])
def test_a_damaged_manifest_is_one_line_for_every_reader(capsys, digits_model, tmp_path, manifest, words):
    copy = tmp_path / "m"
    shutil.copytree(digits_model, copy)
    (copy / "manifest.json").write_text(manifest)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    for args in (["evaluate", copy], ["predict", copy, image], ["export", copy]):
        assert words in refused(capsys, *args)


# ---------------------------------------------------------------- issue 22: silent failures and allocations

PEAK = """
import json, re, sys
from gpuvision.cli import main
code = main(sys.argv[1:])
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) << 10
print(json.dumps({"code": code, "peak": peak}))
"""


def _edit_manifest(model: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(model, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_manifest_asking_for_a_huge_network_is_refused_before_anything_is_allocated(tiny_model, tmp_path):
    """widths [4000, 4000, 4000] in an unsigned manifest: predict once reached 3.27 GB before refusing it."""
    edited = _edit_manifest(tiny_model, tmp_path, lambda m: m["architecture"]["args"].update(widths=[4000] * 3))
    image = tmp_path / "x.png"
    image.write_bytes(image_bytes(1, (8, 8), mode="L"))
    src = Path(gpuvision.__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", PEAK, "predict", str(edited), str(image), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(src)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and "tensors differ" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert result["peak"] < 1 << 30, result  # torch itself and the tiny model: the 3.27 GB network never was


def test_a_manifest_listing_other_classes_than_the_network_outputs_is_refused_at_load(capsys, tiny_model, tmp_path):
    edited = _edit_manifest(tiny_model, tmp_path, lambda m: m.update(classes=m["classes"] + ["eleven"]))
    image = tmp_path / "x.png"
    image.write_bytes(image_bytes(1, (8, 8), mode="L"))
    for args in (["predict", edited, image], ["predict", edited, image, "--top-k", "2"],
                 ["serve", edited, "--port", "0", "--device", "cpu", "--runtime", "eager"]):
        assert "lists 11 classes for a network of 10 outputs" in refused(capsys, *args), args


def test_a_deep_manifest_stops_serve_at_start_up_in_one_line(capsys, tiny_model, tmp_path):
    copy = tmp_path / "deep"
    shutil.copytree(tiny_model, copy)
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested more than" in refused(capsys, "serve", copy, "--port", "0", "--device", "cpu")


def test_pretrained_weights_of_another_width_are_refused_unless_a_partial_load_is_asked(capsys, tiny_model, tmp_path,
                                                                                      caplog):
    config = tmp_path / "c.yaml"
    config.write_text("model_args: {widths: [16, 16, 16]}\n")  # tiny_model's weights are widths 8, 8, 8
    weights = tiny_model / "model.safetensors"
    args = ["train", "--config", config, "--pretrained", weights, "--out", tmp_path / "run", *QUICK]
    assert "--pretrained-partial" in refused(capsys, *args)
    assert not (tmp_path / "run").exists()
    with caplog.at_level("INFO", logger="gpuvision.models"):
        assert main([str(a) for a in [*args, "--pretrained-partial"]]) == 0
    assert "left at their initial values" in caplog.text
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["settings"]["pretrained_partial"] is True
