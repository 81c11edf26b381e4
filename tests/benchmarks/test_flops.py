"""benchmarks/flops.py: the training arithmetic behind the FLOP ratios in BENCHMARKS.md (meta device, no data)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import flops  # noqa: E402
import peer_airbench_muon  # noqa: E402


def test_fast_recipe_plan_counts_the_whitening_bias_phase_and_progressive_resizing():
    full = flops.gpuvision_plan(50_000)  # the default at that size: airbench94_muon's settings
    assert full["optimizer"] == "muon"
    assert (full["batch_size"], full["steps"], full["whiten_bias_steps"]) == (2000, 200, 75)  # bias: 3 of 8 epochs
    assert full["steps_at_side"] == {32: 200}
    # the bias's gradient (and the first block's input gradient) cost FLOPs only while it trains
    no_bias = flops.gpuvision_plan(50_000, whiten_bias_fraction=0.0)
    assert no_bias["flops"] < full["flops"]
    resized = flops.gpuvision_plan(50_000, low_res_scale=0.75)  # the first 4 epochs at 24 px
    assert resized["steps_at_side"] == {24: 100, 32: 100}
    assert 0.7 < resized["flops"] / full["flops"] < 0.8  # (24/32)^2 on half the steps


@pytest.mark.skipif(peer_airbench_muon.default_path() is None, reason="airbench94_muon.py is not beside the repo")
def test_the_reproduction_counts_as_many_flops_as_airbench94_muon():
    ours = flops.gpuvision_plan(50_000)
    peer = flops.muon_peer_plan(50_000)
    assert ours["steps"] == peer["steps"] and ours["flops"] == pytest.approx(peer["flops"], rel=1e-3)
