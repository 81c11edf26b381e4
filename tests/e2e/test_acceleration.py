"""Each acceleration setting, turned on and off through the trainer, is what the manifest records; the best-epoch
selection (--early-stop) keeps the figures of the epoch whose weights it keeps."""

from __future__ import annotations

import json

import gpuvision

TINY = dict(data="digits", device="cpu", model_args={"widths": [8, 16, 16]}, seed=1, checkpoint_every=0)


def test_the_manifest_records_every_acceleration_setting_as_resolved(tmp_path):
    runs = {
        "on": dict(precision="bf16", channels_last="on", optimizer_kernel="fused", loader="stream"),
        "off": dict(precision="fp32", channels_last="off", optimizer_kernel="loop", loader="device"),
    }
    for name, settings in runs.items():
        result = gpuvision.train(out=str(tmp_path / name), epochs=1, eval_every=0, **TINY, **settings)
        training = result.manifest.training
        recorded = training.acceleration
        assert {k: recorded[k] for k in settings} == {k: v if v not in ("on", "off") else v == "on"
                                                      for k, v in settings.items()}
        assert all(recorded["reasons"][k] == "asked" for k in settings)
        assert recorded["cuda_graphs"] is False and recorded["tf32"] is False and recorded["compile"] is False
        assert training.precision == settings["precision"]
        on_disk = json.loads((tmp_path / name / "manifest.json").read_text())["training"]["acceleration"]
        assert on_disk == recorded


def test_early_stop_keeps_the_best_epoch_and_says_which(tmp_path):
    # A learning rate this small leaves validation accuracy flat, so patience 1 ends the run early.
    result = gpuvision.train(out=str(tmp_path / "run"), epochs=5, lr=1e-6, early_stop=1, precision="fp32", **TINY)
    history = result.history
    accuracies = [r["val_accuracy"] for r in history]
    best = max(range(len(history)), key=lambda i: (accuracies[i], -i))  # the first epoch with the best accuracy
    metrics = result.manifest.metrics
    assert metrics["epoch"] == history[best]["epoch"] and metrics["val_accuracy"] == accuracies[best]
    assert metrics["selected_by"] == "best val_accuracy"
    if len(history) < 5:  # stopped early: no later epoch beat the kept one
        assert len(history) - 1 - best >= 1 and all(a <= accuracies[best] for a in accuracies[best + 1:])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [r["epoch"] for r in history]
