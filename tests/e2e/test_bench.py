"""`gpuvision bench --quick` end to end on the CPU, on real CIFAR-10 JPEGs, and `gpuvision doctor --json`, through
the CLI: every section measured or skipped with its reason, the files written, and `auto` following what bench
recorded. Speed is not asserted: only that each figure exists and is consistent."""

from __future__ import annotations

import json

import pytest
import torch

from gpuvision.cli import main
from gpuvision.device import acceleration, probes

CPU = torch.device("cpu")


@pytest.fixture
def own_probes(monkeypatch, tmp_path):
    """The probes' per-machine cache in a directory of the test's own, so no other test follows these figures."""
    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path / "cache"))
    probes._measured.cache_clear()
    yield
    probes._measured.cache_clear()


def test_bench_quick_measures_every_section_on_the_cpu(cifar_subset_tar, own_probes, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--device", "cpu", "--quick", "--data", str(cifar_subset_tar), "--out", str(out),
                 "--profile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "bench.json").read_text())
    rows = {(r["section"], r["name"]): r for r in report["rows"]}
    assert {s for s, _ in rows} == {"host", "data", "training", "inference"}
    for section, name in [("host", "per-image PIL decode"), ("host", "gpuvision parallel decoder"),
                          ("host", "cold load (decode, no cache)"), ("host", "cached load"),
                          ("data", "torch DataLoader, per-image transforms"),
                          ("data", "device-resident batches (DeviceLoader)")]:
        assert rows[section, name]["value"] > 0 and not rows[section, name]["skipped"], name
    assert rows["data", "host-to-device, pinned"]["skipped"].startswith("no copy")

    eager = rows["training", "fp32, NCHW, eager"]
    assert eager["value"] > 0 and eager["figures"]["steps"] >= 2 and eager["figures"]["batch_size"] == 64
    assert set(eager["figures"]["phase_share"]) == {"data", "forward", "backward", "optimizer"}
    assert sum(eager["figures"]["phase_share"].values()) == pytest.approx(1.0)
    assert eager["figures"]["acceleration"]["channels_last"] is False
    assert rows["training", "+ channels_last"]["figures"]["acceleration"]["channels_last"] is True
    assert rows["training", "+ bf16 autocast"]["figures"]["acceleration"]["precision"] == "bf16"
    assert eager["figures"]["tflops"] > 0 and eager["figures"]["peak_memory_mib"] > 0
    assert "--quick" in rows["training", "+ torch.compile"]["skipped"]
    assert "CUDA" in rows["training", "+ CUDA graphs"]["skipped"] and "CUDA" in rows["training", "+ TF32"]["skipped"]
    for name in ("eager fp32", "eager bf16 autocast", "int8 (onnxruntime, static QDQ)", "ONNX fp32 (onnxruntime)"):
        row = rows["inference", name]
        assert row["value"] > 0 and row["figures"]["latency_ms_b1"] > 0, name

    assert report["machine"]["cpu"] and report["versions"]["torch"] == torch.__version__
    assert report["data"]["images"] == 600 and report["model"]["name"] == "fastnet"
    text = (out / "bench.md").read_text()
    assert "## Training step" in text and "## Inference" in text and report["commit"] in text
    for chart in report["files"]["charts"]:
        assert open(chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    (profile,) = report["files"]["profiles"]
    assert json.loads(open(profile).read())["traceEvents"]

    # auto follows the eager rates bench recorded for this model on this machine
    key = acceleration.workload("fastnet", 32)  # rates are per model and image size
    recorded = report["recorded"]["cpu"][key]
    assert recorded == {"fp32/nchw": eager["value"], "fp32/channels_last": rows["training", "+ channels_last"]["value"],
                        "bf16/channels_last": rows["training", "+ bf16 autocast"]["value"]}
    assert probes.measured(CPU)["training"][key] == recorded
    precision, reason = acceleration.auto_precision(CPU, key)
    assert f"gpuvision bench measured {key}" in reason
    faster = recorded["bf16/channels_last"] >= acceleration.FAST_RATIO * recorded["fp32/channels_last"]
    assert precision == ("bf16" if faster else "fp32")


def test_bench_refuses_a_missing_gpu_and_a_model_directory_as_out(tiny_model, capsys):
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--quick"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--quick", "--out", str(tiny_model)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "model directory" in err and "\n" not in err


def test_doctor_json_describes_this_machine(own_probes, capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"] == torch.__version__
    assert report["cuda"]["available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert report["cuda"]["problem"]  # a CPU build or an unusable CUDA, said as such
    cpu = report["devices"][0]
    assert cpu["device"] == "cpu" and cpu["matmul_tflops"]["fp32"] > 0 and cpu["memory_bandwidth_gbs"] > 0
    assert cpu["auto"]["precision"]["value"] in ("fp32", "bf16")
    assert probes.measured(CPU)["matmul_tflops"] == cpu["matmul_tflops"]  # what auto reads from now on
    assert main(["doctor"]) == 0
    assert "auto picks:" in capsys.readouterr().out
