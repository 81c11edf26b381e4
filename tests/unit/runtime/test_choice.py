"""The one runtime-choice policy: a lone request and a full batch weigh alike, per image."""

from __future__ import annotations

from gpuvision.runtime.choice import fastest


def test_the_policy_weighs_batch_one_and_a_full_batch_alike():
    # a: best at batch 1, 3x worse at the full batch; b: 1.5x worse at batch 1, best at the full batch
    timings = {"a": {"b1": 1.0, "b64": 30.0}, "b": {"b1": 1.5, "b64": 10.0}}
    assert fastest(timings) == "b"  # 1.5 + 1 < 1 + 3
    timings["c"] = {"b1": 0.5, "b64": 12.0}
    assert fastest(timings) == "c"  # 1 + 1.2 beats b's 3 + 1


def test_padding_runtimes_are_compared_per_image():
    # inductor pads a 48-image batch to 64: its 64-image call is compared per image with eager's 48-image call
    timings = {"eager": {"b1": 1.0, "b48": 48.0}, "inductor": {"b1": 1.0, "b64": 32.0}}
    assert fastest(timings) == "inductor"
