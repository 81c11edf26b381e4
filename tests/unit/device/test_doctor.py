"""`gpuvision doctor`: a CUDA that torch was built with but cannot use is reported with advice, never raised; the
JSON report has the documented fields."""

from __future__ import annotations

import json

import pytest
import torch

from gpuvision.device import acceleration, doctor, probes

TOO_OLD = ("The NVIDIA driver on your system is too old (found version 11040). Please update your GPU driver by "
           "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx")


@pytest.fixture
def cuda_unusable(monkeypatch, tmp_path):
    """torch built with CUDA 12.8, no device usable, and init failing as `message` says; probes fast and fixed,
    cached in a directory of the test's own."""

    def unusable(message: str, driver: str | None = "470.82"):
        def init():
            raise RuntimeError(message)

        monkeypatch.setattr(torch.version, "cuda", "12.8")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "init", init)
        monkeypatch.setattr(doctor, "nvidia_driver", lambda: driver)

    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path))
    monkeypatch.setattr(probes, "matmul_tflops", lambda device, precision, seconds=0.5: {"fp32": 0.2, "bf16": 0.7,
                                                                                        "fp16": None}[precision])
    monkeypatch.setattr(probes, "memory_bandwidth", lambda device, seconds=0.5: 12.5)
    probes._measured.cache_clear()
    yield unusable
    probes._measured.cache_clear()  # nothing measured here leaks into later tests


@pytest.mark.parametrize("message, problem, advice", [
    (TOO_OLD, "driver mismatch", "update the driver"),
    ("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver",
     "no NVIDIA driver", "install its driver"),
    ("No CUDA GPUs are available", "no CUDA device", "CUDA_VISIBLE_DEVICES"),
])
def test_cuda_built_but_unusable_says_why_and_what_to_do(cuda_unusable, message, problem, advice):
    cuda_unusable(message)
    status = doctor.cuda_status()
    assert status["built"] == "12.8" and status["available"] is False and status["devices"] == 0
    assert status["problem"].startswith(problem) and message.split(".")[0] in status["problem"]
    assert advice in status["advice"]


def test_a_cpu_only_torch_beside_an_nvidia_driver_is_advised_to_install_a_cuda_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(doctor, "nvidia_driver", lambda: "550.54.14")
    status = doctor.cuda_status()
    assert status["problem"] == "this torch is a CPU-only build" and "CUDA build of torch" in status["advice"]
    monkeypatch.setattr(doctor, "nvidia_driver", lambda: None)
    assert doctor.cuda_status()["advice"] is None  # no GPU driver here: nothing to fix


def test_the_report_has_the_documented_fields_and_a_missing_cuda_is_a_finding_not_a_crash(cuda_unusable):
    cuda_unusable(TOO_OLD)
    report = doctor.doctor()
    out = json.loads(json.dumps(report.to_json()))  # JSON as `doctor --json` prints it
    assert out["schema_version"] == 1
    assert set(out["versions"]) == {"python", "gpuvision", "commit", "torch", "cuda", "cudnn", "driver"}
    assert {"cpu", "cores", "isa", "gpus"} <= set(out["machine"])
    assert out["cuda"]["available"] is False and out["cuda"]["problem"].startswith("driver mismatch")
    assert out["cuda"]["advice"] in out["advice"]
    (cpu,) = out["devices"]  # the unusable GPU is no device
    assert cpu["device"] == "cpu" and cpu["memory_bytes"] > 0
    assert set(cpu["tries"]) == {"bf16", "fp16", "tf32", "fp8", "channels_last", "compile"}
    assert cpu["tries"]["channels_last"] is True and cpu["tries"]["tf32"] is False
    assert cpu["tries"]["compile"].startswith("not tried")  # no --compile-probe
    assert cpu["matmul_tflops"] == {"fp32": 0.2, "bf16": 0.7} and cpu["memory_bandwidth_gbs"] == 12.5
    assert set(cpu["auto"]) == set(acceleration.SETTINGS)
    assert cpu["auto"]["precision"]["value"] == "bf16" and "measured" in cpu["auto"]["precision"]["reason"]
    assert out["cache"]["free_bytes"] > 0
    assert probes.measured(torch.device("cpu"))["matmul_tflops"] == {"fp32": 0.2, "bf16": 0.7}  # cached for auto
    text = report.text()
    assert "driver mismatch" in text and "update the driver" in text


def test_bench_rates_show_what_auto_picks_for_that_model(cuda_unusable):
    cuda_unusable(TOO_OLD)
    probes.record_training(torch.device("cpu"), "fastnet", {"fp32/channels_last": 300.0, "bf16/channels_last": 250.0,
                                                            "fp32/nchw": 320.0})
    (cpu,) = doctor.doctor().devices
    assert cpu.bench["fastnet"]["precision"] == "fp32"  # bf16 measured slower for this model, despite the matmul
    assert cpu.bench["fastnet"]["channels_last"] is False  # NCHW measured faster in fp32
    assert cpu.auto["precision"]["value"] == "bf16"  # any other model: the matmul probe decides
