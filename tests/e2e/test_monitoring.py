"""Production against test on a real server (uvicorn on 127.0.0.1) serving the session's trained digits model:
its own test images look like its reference, darkened ones drift, wrong labels give `worse`, the window survives a
restart with --monitor-dir, and `gpuvision monitor` reports it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import serving

from gpuvision.cli import main
from gpuvision.config import ServeConfig

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

BATCH = 64


def test_split(model_dir) -> tuple[np.ndarray, np.ndarray]:
    """The model's test images (N x 1 x 8 x 8 uint8) and labels."""
    from gpuvision.data import load_images
    from gpuvision.data.split import load_split

    images = load_images("digits")
    test = load_split(model_dir / "split.json", images).test
    return images.images[test], images.labels[test]


test_split.__test__ = False  # a helper, not a test


def infer(client: httpx.Client, url: str, pixels: np.ndarray) -> tuple[list[str], list[int]]:
    """Prediction ids and predicted classes for N x 1 x H x W pixels, sent as KServe v2 UINT8 in requests of 64."""
    ids, predicted = [], []
    for start in range(0, len(pixels), BATCH):
        x = pixels[start : start + BATCH].transpose(0, 2, 3, 1)
        body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": list(x.shape),
                            "data": x.flatten().tolist()}], "outputs": [{"name": "logits"}]}
        answer = client.post(f"{url}/v2/models/digits/infer", json=body).raise_for_status().json()
        ids += answer["parameters"]["prediction_ids"]
        predicted += np.array(answer["outputs"][0]["data"]).reshape(len(x), -1).argmax(1).tolist()
    return ids, predicted


def label_all(client: httpx.Client, url: str, ids: list[str], labels) -> None:
    for prediction_id, label in zip(ids, labels):
        client.post(f"{url}/models/digits/feedback", json={"id": prediction_id, "label": str(label)}
                    ).raise_for_status()


def test_test_traffic_matches_the_reference_and_the_window_survives_a_restart(digits_model, tmp_path, capsys):
    pixels, labels = test_split(digits_model)
    config = ServeConfig(models=[f"digits={digits_model}"], runtime="eager", device="cpu",
                         monitor_dir=str(tmp_path / "monitor")).validate()
    with serving(config) as (url, _), httpx.Client(timeout=60) as client:
        ids, _ = infer(client, url, pixels)
        label_all(client, url, ids, labels)  # the true labels
        before = client.get(f"{url}/models/digits/monitor").json()
    accuracy, drift = before["accuracy"], before["drift"]
    assert accuracy["labelled"] == len(labels) and accuracy["verdict"] == "ok" and accuracy["p_value"] > 0.01
    assert abs(accuracy["live"] - accuracy["test"]) < 0.02 and accuracy["test"] == before["reference"]["accuracy"]
    for signal in ("confidence", "brightness", "classes"):  # the test split itself: no drift
        assert drift[signal]["psi"] < 0.1 and drift[signal]["state"] == "ok", (signal, drift[signal])
    assert before["notes"] == []  # served as measured: eager-fp32, no TTA

    with serving(config) as (url, _), httpx.Client(timeout=60) as client:  # a new process would read the same file
        after = client.get(f"{url}/models/digits/monitor").json()
        assert after["window"] == before["window"] and after["accuracy"] == accuracy
        for signal in ("confidence", "brightness", "classes"):  # kept to 5 decimals in the file
            assert after["drift"][signal]["psi"] == pytest.approx(drift[signal]["psi"], abs=1e-4)
        assert client.post(f"{url}/models/digits/feedback", json={"id": ids[0], "label": "1"}).status_code == 409

        assert main(["monitor", url, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert main(["monitor", url, "--model", "digits"]) == 0
        table = capsys.readouterr().out
    report = printed["models"][0]
    assert printed["schema_version"] == 1 and report["model"] == "digits"
    for key in ("version", "runtime", "tta", "serving", "window", "accuracy", "drift", "reference", "notes"):
        assert key in report, key
    assert {"requests", "mean_batch", "latency_ms"} <= set(report["serving"])
    assert {"verdict", "labelled", "live", "test", "p_value", "per_class_recall"} <= set(report["accuracy"])
    assert report["accuracy"]["verdict"] == "ok" and report["accuracy"]["labelled"] == len(labels)
    header, row = table.splitlines()[:2]
    assert "verdict" in header and "p-value" in header and row.split()[0] == "digits" and " ok " in row


def test_darkened_images_drift_and_wrong_labels_are_worse(digits_model):
    pixels, _ = test_split(digits_model)
    config = ServeConfig(models=[f"digits={digits_model}"], runtime="eager", device="cpu").validate()
    with serving(config) as (url, _), httpx.Client(timeout=60) as client:
        ids, predicted = infer(client, url, (pixels * 0.4).astype(np.uint8))
        # 40% of the labels say the model was wrong
        label_all(client, url, ids, [(p + 1) % 10 if i % 5 < 2 else p for i, p in enumerate(predicted)])
        report = client.get(f"{url}/models/digits/monitor").json()
    assert report["drift"]["brightness"]["psi"] > 0.25 and report["drift"]["brightness"]["state"] == "drift"
    accuracy = report["accuracy"]
    assert accuracy["verdict"] == "worse" and accuracy["p_value"] < 0.01
    assert accuracy["live"] == pytest.approx(0.6, abs=0.01) and accuracy["correct"] == round(0.6 * len(ids))


def test_monitor_without_a_server_is_one_line(capsys):
    assert main(["monitor", "http://127.0.0.1:9"]) == 2  # the discard port: nothing listens
    assert capsys.readouterr().err.startswith("error: cannot reach http://127.0.0.1:9")
    assert main(["monitor", "127.0.0.1:8000"]) == 2
