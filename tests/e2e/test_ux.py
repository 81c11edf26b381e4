"""What a new user meets: the main job and the README's Python snippet run as written, predict takes folders and
globs and reports bad files one by one, evaluation shows the balanced figures and calibration, and pretrained
weights come from a Hugging Face hub cache offline (built here: nothing is downloaded)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_tree

ROOT = Path(__file__).resolve().parents[2]


def gv(*args, cwd=None, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "gpuvision", *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=cwd, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """`gpuvision demo` in a fresh working directory, as the README's first command runs it."""
    cwd = tmp_path_factory.mktemp("user")
    proc = gv("demo", cwd=cwd)
    return cwd, proc


def test_the_demo_says_which_predictions_are_wrong_and_where_it_went(main_job):
    cwd, proc = main_job
    latest = cwd / "runs" / "digits-demo" / "latest"
    assert latest.is_symlink() and (latest / "model" / "manifest.json").is_file()
    assert json.loads((latest / "run.json").read_text())["status"] == "done"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("predicted ")]
    assert len(lines) == 5 and all(line.endswith("right") or "WRONG, it is a" in line for line in lines)
    assert "calibrated on" in proc.stderr and "estimated training time: about" in proc.stderr


def test_the_readme_python_snippet_runs_as_written_after_the_main_job(main_job):
    cwd, _ = main_job
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"From Python:\n\n```python\n(.*?)```", readme, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 3" in proc.stderr  # the Python API reports progress as the CLI does
    assert proc.stdout.count("'probability'") >= 15  # five sample images, three classes each


def test_evaluation_reports_balanced_figures_calibration_and_mistakes(main_job):
    cwd, _ = main_job
    report = json.loads((cwd / "runs/digits-demo/latest/model-eval/test.json").read_text())
    assert report["balanced_accuracy"] > 0.9 and report["macro_f1"] > 0.9 and report["top5_accuracy"] >= 0.99
    c = report["calibration"]
    assert c["temperature"] != 1.0 and c["ece_after"] < c["ece_before"], c  # calibrated on val, better on test
    for key in ("confusion_png", "reliability_png"):
        assert Path(cwd / report[key]).read_bytes()[:4] == b"\x89PNG"
    assert "mistakes_png" not in report or Path(cwd / report["mistakes_png"]).is_file()


def test_predict_takes_folders_and_globs_and_goes_on_past_bad_files(main_job):
    cwd, _ = main_job
    samples = "runs/digits-demo/latest/samples"
    (cwd / "bad.png").write_text("not a picture")
    proc = gv("predict", "runs/digits-demo/latest/model", samples, f"{samples}/*-label-9.png", "bad.png",
              "missing.png", "--top-k", "2", "--out", "out/p.csv", cwd=cwd, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 2 of 8 images could not be read (the first: "
                                                           "bad.png: not an image")
    rows = list(csv.DictReader(open(cwd / "out/p.csv")))
    assert len(rows) == 8 and [r["error"] != "" for r in rows] == [False] * 6 + [True, True]
    right = [r for r in rows[:5] if r["image"].endswith(f"-label-{r['class']}.png")]
    assert len(right) >= 3 and all(float(r["probability"]) >= float(r["probability_2"]) for r in rows[:6])
    as_json = json.loads(gv("predict", "runs/digits-demo/latest/model", samples, "--json", cwd=cwd).stdout)
    assert len(as_json["predictions"]) == 5 and as_json["errors"] == []


# ------------------------------------------------------------------------------------------ pretrained from a hub
def hub_cache(home: Path) -> str:
    """A Hugging Face cache (HF_HOME) holding timm's default resnet18 weights, laid out as huggingface_hub leaves
    it (refs/main -> snapshots/<commit>/), with random weights: a download, without the network."""
    import timm
    import torch
    from safetensors.torch import save_file

    cfg = timm.models.get_pretrained_cfg("resnet18")
    repo = home / "hub" / f"models--{cfg.hf_hub_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000,
                                                      "pretrained_cfg": cfg.to_dict()}))
    return cfg.hf_hub_id


def test_pretrained_imagenet_comes_from_the_hub_cache_offline(tmp_path):
    from safetensors.torch import load_file

    photos = make_tree(tmp_path / "photos", classes=("ants", "bees"), per_class=4, prefix="train", size=(96, 80),
                       fmt="JPEG")
    make_tree(photos, classes=("ants", "bees"), per_class=2, prefix="val", size=(96, 80), fmt="JPEG")
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    refused = gv("train", "--data", photos, "--pretrained", "imagenet", "--out", tmp_path / "none", env=offline,
                 check=False)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "cannot get model.safetensors of timm/resnet18" in last and "hf download" in last
    assert "Traceback" not in refused.stderr and not (tmp_path / "none").exists()

    hub_id = hub_cache(tmp_path / "hf")
    out = tmp_path / "ants-bees"
    proc = gv("train", "--data", photos, "--pretrained", "imagenet", "--epochs", "1", "--out", out, env=offline)
    assert f"fine-tuning {hub_id}" in proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["architecture"]["name"] == "resnet18" and m["architecture"]["weights"]["hub_id"] == hub_id
    assert m["input"]["size"] == [224, 224] and m["input"]["channels"] == 3  # the weights' size ...
    assert [round(v / 255, 3) for v in m["input"]["mean"]] == [0.485, 0.456, 0.406]  # ... and statistics
    assert m["recipe"]["name"] == "standard" and m["recipe"]["body_lr"] == 0.1
    body = load_file(str(out / "model.safetensors"))
    assert body["fc.weight"].shape == (2, 512)  # a new classifier for the two classes
