"""Config dataclasses: every value from a flag, a file or a manifest is checked against its type and range."""

from __future__ import annotations

import pytest

from gpuvision.config import CompressConfig, ExportConfig, TrainConfig, read_config_file
from gpuvision.errors import BadInput, NotFound


@pytest.mark.parametrize("settings, words", [
    ({"epochs": float("inf")}, "finite"),
    ({"epochs": 0}, "--epochs must be in"),
    ({"epochs": "ten"}, "--epochs must be float"),
    ({"seed": -1}, "--seed must be in"),
    ({"seed": 2**64}, "--seed must be in"),
    ({"lr": float("nan")}, "finite"),
    ({"batch_size": 2.5}, "--batch-size must be int"),
    ({"val_fraction": 1.0}, "--val-fraction must be in"),
    ({"precision": "fp8"}, "--precision must be one of"),
    ({"overwrite": "yes"}, "--overwrite must be bool"),
    ({"model_args": [1, 2]}, "--model-args must be dict"),
    ({"resume": True, "overwrite": True}, "contradict"),
])
def test_bad_train_settings_are_refused_in_one_line(settings, words):
    with pytest.raises(BadInput, match=words) as caught:
        TrainConfig(**settings).validate()
    assert "\n" not in str(caught.value)


def test_good_settings_pass_and_ints_become_floats_where_floats_are_expected():
    config = TrainConfig(epochs=3, seed=2**63 - 1, val_fraction=0).validate()
    assert config.epochs == 3.0 and isinstance(config.epochs, float) and isinstance(config.val_fraction, float)
    assert CompressConfig(model_dir="m", data="digits").validate().method == "all"
    assert ExportConfig(model_dir="m").validate().format == "onnx"


def test_compress_needs_data():
    with pytest.raises(BadInput, match="--data"):
        CompressConfig(model_dir="m").validate()


def test_config_file_types_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: ten\nseed: 1\n")
    settings = read_config_file(str(path))
    with pytest.raises(BadInput, match="--epochs must be float"):
        TrainConfig(**settings).validate()
    path.write_text("epochz: 3\n")
    with pytest.raises(BadInput, match="unknown setting"):
        read_config_file(str(path))
    path.write_text("- a list\n")
    with pytest.raises(BadInput, match="mapping"):
        read_config_file(str(path))
    path.write_text("a: [unclosed\n")
    with pytest.raises(BadInput, match="not valid YAML"):
        read_config_file(str(path))
    with pytest.raises(NotFound):
        read_config_file(str(tmp_path / "missing.yaml"))
