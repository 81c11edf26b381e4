"""Device choice, the measured precision policy, the machine description and the acceleration settings."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from gpuvision import device as dev
from gpuvision.device import acceleration, hardware, probes
from gpuvision.errors import UserError

CPU = torch.device("cpu")
AMX = {"matmul_tflops": {"fp32": 0.23, "bf16": 0.71}}  # as measured on an AMX Xeon
AVX2 = {"matmul_tflops": {"fp32": 0.09, "bf16": 0.02}}  # bf16 emulated: far slower than fp32


def measured_as(monkeypatch, figures: dict) -> None:
    monkeypatch.setattr(acceleration, "measured", lambda device: figures)


@pytest.mark.parametrize("figures, expected", [(AMX, "bf16"), (AVX2, "fp32")])
def test_auto_precision_on_the_cpu_follows_the_measured_rates(monkeypatch, figures, expected):
    measured_as(monkeypatch, figures)
    assert dev.pick_precision("auto", CPU) == expected
    assert dev.fast_precisions(CPU) == (["fp32", "bf16"] if expected == "bf16" else ["fp32"])
    assert "measured" in dev.auto_precision(CPU)[1]
    assert dev.pick_precision("fp32", CPU) == "fp32"
    with pytest.raises(UserError, match="fp16"):
        dev.pick_precision("fp16", CPU)


def test_a_model_measured_slower_in_bf16_does_not_get_it(monkeypatch):
    """The matmul probe says bf16 is fast, but `bench` measured this model slower in bf16: auto follows bench."""
    rates = {"fp32/channels_last": 300.0, "bf16/channels_last": 250.0, "fp32/nchw": 200.0}
    key = acceleration.workload("fastnet", 32)
    measured_as(monkeypatch, {**AMX, "training": {key: rates}})
    precision, reason = dev.auto_precision(CPU, key)
    assert precision == "fp32" and "bench" in reason
    assert dev.auto_precision(CPU, "resnet18@32px")[0] == "bf16"  # no bench figure for it: the matmul probe decides
    assert dev.auto_precision(CPU, acceleration.workload("fastnet", 8))[0] == "bf16"  # nor for 8 px images
    accel = acceleration.resolve(CPU, model=key)
    assert accel.precision == "fp32" and accel.channels_last  # 300 channels_last > 200 NCHW in fp32


def test_inference_never_runs_below_the_recorded_precision(monkeypatch, caplog):
    measured_as(monkeypatch, AMX)
    assert dev.inference_precision("fp32", CPU) == "fp32"  # recorded fp32 stays fp32 even where bf16 is fast
    assert dev.inference_precision("bf16", CPU) == "bf16"
    measured_as(monkeypatch, AVX2)
    monkeypatch.setattr(dev, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="gpuvision.device"):
        assert dev.inference_precision("bf16", CPU) == "fp32"
        assert dev.inference_precision("bf16", CPU) == "fp32"
    assert sum("running it in fp32" in r.message for r in caplog.records) == 1  # logged once


def test_describe_device_names_the_cpu_and_its_extensions(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16", "amx_int8"}))
    text = dev.describe_device(CPU)
    assert text.startswith("cpu:") and "amx_bf16" in text and "avx2" in text


def test_the_machine_description_is_one_json_object():
    m = dev.machine()
    info = json.loads(json.dumps(m.to_json()))
    assert info["cpu"] and info["cores"] >= 1 and info["torch"] == torch.__version__
    assert set(info["isa"]) <= set(dev.ISA_FLAGS)
    assert len(m.fingerprint) == 16


def test_unknown_or_absent_devices_are_user_errors():
    with pytest.raises(UserError):
        dev.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            dev.pick_device("cuda")


def test_measurements_are_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path))
    probes._measured.cache_clear()
    calls = []
    monkeypatch.setattr(probes, "matmul_tflops", lambda device, p, seconds=0.5: calls.append(p) or 1.0)
    first = probes.measured(CPU)
    assert first["matmul_tflops"] == {"fp32": 1.0, "bf16": 1.0} and calls == ["fp32", "bf16"]
    probes._measured.cache_clear()  # a new process reads the file instead of measuring again
    assert probes.measured(CPU)["matmul_tflops"] == first["matmul_tflops"] and len(calls) == 2
    probes.record_training(CPU, "fastnet", {"bf16/channels_last": 900.0})
    assert probes.measured(CPU)["training"]["fastnet"] == {"bf16/channels_last": 900.0}
    files = list((tmp_path / "machine").iterdir())
    assert len(files) == 1 and files[0].name.startswith(dev.machine().fingerprint)
    probes._measured.cache_clear()


def test_probes_measure_real_rates_and_stop_in_time():
    import time

    started = time.perf_counter()
    fp32 = probes.matmul_tflops(CPU, "fp32", seconds=0.1)
    bandwidth = probes.memory_bandwidth(CPU, seconds=0.1)
    assert fp32 > 0.001 and bandwidth > 0.1  # TFLOP/s and GB/s: any real CPU does this much
    assert time.perf_counter() - started < 20  # bounded (generous: the machine is shared)
    found = probes.tries(CPU)
    assert found["bf16"] is True and found["channels_last"] is True and found["fp16"] in (True, False)
    assert found["tf32"] is False and found["fp8"] is False and "not tried" in found["compile"]


def test_acceleration_auto_on_the_cpu_says_why(monkeypatch):
    measured_as(monkeypatch, AMX)
    accel = acceleration.resolve(CPU, model="fastnet")
    assert (accel.precision, accel.channels_last, accel.compile, accel.cuda_graphs, accel.tf32,
            accel.cudnn_benchmark, accel.optimizer_kernel, accel.loader) == (
        "bf16", True, False, False, False, False, "foreach", "device")
    assert set(accel.reasons) == set(acceleration.SETTINGS) and all(accel.reasons.values())
    asked = acceleration.resolve(CPU, precision="fp32", channels_last="off", compile="on", optimizer_kernel="loop")
    assert (asked.precision, asked.channels_last, asked.compile, asked.optimizer_kernel) == ("fp32", False, True,
                                                                                            "loop")
    assert asked.reasons["channels_last"] == "asked"


@pytest.mark.parametrize("setting, message", [("cuda_graphs", "CUDA"), ("tf32", "compute capability"),
                                              ("cudnn_benchmark", "CUDA")])
def test_cuda_only_switches_asked_on_a_cpu_are_refused(monkeypatch, setting, message):
    measured_as(monkeypatch, AMX)
    with pytest.raises(UserError, match=message):
        acceleration.resolve(CPU, **{setting: "on"})
    assert getattr(acceleration.resolve(CPU, **{setting: "off"}), setting) is False
