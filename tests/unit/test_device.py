"""Device and precision choice, including both branches of `--precision auto` on the CPU (flags faked)."""

from __future__ import annotations

import logging

import pytest
import torch

from gpuvision import device as dev
from gpuvision.errors import UserError

AMX = frozenset({"avx2", "avx512f", "amx_bf16", "amx_int8"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags, expected", [(AMX, "bf16"), (AVX2, "fp32")])
def test_auto_precision_on_the_cpu_follows_its_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(dev, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert dev.pick_precision("auto", cpu) == expected
    assert dev.fast_precisions(cpu) == (["fp32", "bf16"] if expected == "bf16" else ["fp32"])
    assert dev.pick_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError, match="fp16"):
        dev.pick_precision("fp16", cpu)


def test_inference_never_runs_below_the_recorded_precision(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_flags", lambda: AMX)
    assert dev.inference_precision("fp32", cpu) == "fp32"  # recorded fp32 stays fp32 even where bf16 is fast
    assert dev.inference_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(dev, "cpu_flags", lambda: AVX2)
    monkeypatch.setattr(dev, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="gpuvision.device"):
        assert dev.inference_precision("bf16", cpu) == "fp32"
        assert dev.inference_precision("bf16", cpu) == "fp32"
    assert sum("running it in fp32" in r.message for r in caplog.records) == 1  # logged once


def test_describe_device_names_the_cpu_and_its_extensions(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: AMX)
    text = dev.describe_device(torch.device("cpu"))
    assert text.startswith("cpu:") and "amx_bf16" in text and "avx2" in text


def test_unknown_or_absent_devices_are_user_errors():
    with pytest.raises(UserError):
        dev.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            dev.pick_device("cuda")
