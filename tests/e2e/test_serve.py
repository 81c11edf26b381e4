"""`gpuvision serve` as a user runs it: a stock tritonclient with its defaults, answers equal to
`gpuvision predict`'s, and a graceful stop on SIGTERM. One server process on 127.0.0.1, any free port."""

from __future__ import annotations

import io
import json
import signal
import socket
import threading

import numpy as np
import pytest
from helpers import serve_process

from gpuvision.cli import main

pytest.importorskip("fastapi")
triton = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(digits_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with serve_process([f"digits={digits_model}", "--device", "cpu", "--runtime", "eager"], log) as started:
        yield started


def test_a_stock_triton_client_gets_what_gpuvision_predict_prints(server, digits_model, tmp_path, capsys):
    from PIL import Image

    _, info = server
    images = np.random.default_rng(3).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    paths = [str(tmp_path / f"{i}.png") for i in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    assert main(["predict", str(digits_model), *paths, "--no-tta", "--top-k", "10", "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["predictions"]

    client = triton.InferenceServerClient(info["url"].removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    metadata = client.get_model_metadata("digits")
    classes = metadata["parameters"]["classes"]
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths])[..., None]  # N x H x W x 1, as the files hold
    for binary in (True, False):
        tensor = triton.InferInput("input", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        outputs = None if binary else [triton.InferRequestedOutput("probabilities", binary_data=False)]
        served = client.infer("digits", [tensor], outputs=outputs).as_numpy("probabilities")
        for row, prediction in zip(served, printed):
            expected = {t["class"]: t["probability"] for t in prediction["top"]}
            assert np.allclose(row, [expected[c] for c in classes], atol=1e-5), binary


def test_sigterm_lets_a_request_in_flight_finish(server):
    process, info = server
    host, port = info["url"].removeprefix("http://").split(":")
    body = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 8, 8, 1],
                                   "data": [7] * 64}]}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:20])
        threading.Event().wait(0.5)  # the server has the request's head: it is in flight
        process.send_signal(signal.SIGTERM)
        threading.Event().wait(0.5)
        conn.sendall(body[20:])
        response = io.BytesIO()
        while chunk := conn.recv(65536):
            response.write(chunk)
    head, _, payload = response.getvalue().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload)["outputs"][1]["name"] == "probabilities"
    assert process.wait(30) == -signal.SIGTERM  # uvicorn ends by the signal, after the graceful shutdown
