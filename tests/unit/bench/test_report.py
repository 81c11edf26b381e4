"""The bench report's tables and charts: each row against its baseline, CPU against GPU side by side (a report made
here, as `bench --device all` makes one on a GPU machine)."""

from __future__ import annotations

import json

from gpuvision.bench.report import BenchReport, Row, markdown, write

PNG = b"\x89PNG\r\n\x1a\n"


def two_device_report() -> BenchReport:
    rows = [Row("host", "decode", "per-image PIL decode", "host", 1000.0, "img/s"),
            Row("host", "decode", "gpuvision parallel decoder", "host", 3000.0, "img/s")]
    for device, scale in (("cpu", 1.0), ("cuda", 50.0)):
        rows += [Row("data", "copy", "host-to-device, pinned", device, *((None, "GB/s") if device == "cpu" else
                                                                          (20.0, "GB/s")),
                     skipped="no copy: the CPU trains from host memory" if device == "cpu" else None),
                 Row("training", "step", "fp32, NCHW, eager", device, 100.0 * scale, "img/s",
                     {"phase_share": {"data": 0.1, "forward": 0.3, "backward": 0.5, "optimizer": 0.1},
                      "tflops": 0.07 * scale, "peak_share": 0.3, "first_steps_s": 2.0, "peak_memory_mib": 900.0}),
                 Row("training", "step", "+ bf16 autocast", device, 250.0 * scale, "img/s",
                     {"phase_share": {"data": 0.1, "forward": 0.3, "backward": 0.5, "optimizer": 0.1}}),
                 Row("training", "step", "+ CUDA graphs", device, *((None, "img/s") if device == "cpu" else
                                                                    (400.0 * scale, "img/s")),
                     skipped="CUDA graphs need a CUDA device" if device == "cpu" else None),
                 Row("inference", "inference", "eager fp32", device, 500.0 * scale, "img/s",
                     {"latency_ms_b1": 10.0 / scale}),
                 Row("inference", "inference", "int8 (onnxruntime, static QDQ)", device, 1000.0 * scale, "img/s",
                     {"latency_ms_b1": 2.5 / scale})]
    machine = {"cpu": "Some Xeon", "cores": 2, "isa": ["avx2", "amx_bf16"], "gpus": [{"name": "H200"}]}
    versions = {"python": "3.12", "gpuvision": "0.2.0", "commit": "abc1234", "torch": "2.11", "cuda": "12.8",
                "cudnn": 91000, "driver": "570.1"}
    return BenchReport(settings={"threads": 16, "command": "gpuvision bench --device all", "quick": False},
                       date="2026-12-02", commit="abc1234", versions=versions, machine=machine,
                       devices=["cpu", "cuda"],
                       data={"source": "cifar10-jpeg.tar.gz", "images": 60000, "shape": "3x32x32",
                             "train_images": 50000},
                       model={"name": "fastnet", "params": 1972792, "forward_mflops": 236.3, "batch_size": 1024},
                       peak_tflops={"cpu": {"fp32": 0.2, "bf16": 0.7}, "cuda": {"fp32": 50.0, "bf16": 700.0}},
                       load_average={"start": 0.5, "end": 0.7}, rows=rows)


def test_rows_are_set_against_their_baseline_and_the_gpu_against_the_cpu():
    report = two_device_report()
    text = markdown(report)
    training = text.split("## Training step")[1].split("###")[0]
    assert "| row | cpu | x | cuda | x | cuda / cpu |" in training
    assert "| + bf16 autocast | 250 img/s | 2.50x | 12,500 img/s | 2.50x | 50.00x |" in training
    assert "skipped: CUDA graphs need a CUDA device" in training
    inference = text.split("## Inference")[1]
    assert "| int8 (onnxruntime, static QDQ) | 2.50 | 4.00x | 1,000 | 2.00x |" in inference
    assert "| 50.00x | 50.00x |" in inference  # the GPU over the CPU, batch 1 and batch 256
    assert "| gpuvision parallel decoder | 3,000 img/s | 3.00x |" in text
    assert "Some Xeon, 2 cores, ISA avx2 amx_bf16 (AMX)" in text and "GPUs: H200" in text
    assert "### Training on cuda: where the time goes" in text


def test_write_gives_the_json_the_markdown_and_a_chart_per_section(tmp_path):
    report = two_device_report()
    write(report, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][2]["skipped"].startswith("no copy")
    assert (tmp_path / "bench.md").read_text() == markdown(report)
    charts = sorted(p.name for p in tmp_path.glob("*.png"))
    assert charts == ["bench-data.png", "bench-host.png", "bench-inference.png", "bench-training.png"]
    assert all((tmp_path / c).read_bytes().startswith(PNG) for c in charts)
    assert report.files["charts"] == [str(tmp_path / f"bench-{s}.png") for s in ("host", "data", "training",
                                                                                  "inference")]
