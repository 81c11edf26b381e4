"""The HTTP server end to end on 127.0.0.1: protocol, upload API, auth, limits, batching, metrics, no 5xx."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def digits(n: int) -> np.ndarray:
    """n 8 x 8 grey images (the digits model's input size), as PNG-able uint8 arrays."""
    return np.random.default_rng(n).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def uint8_request(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [*x.shape, 1], "data": x.flatten().tolist()}]}


def test_health_is_open_and_everything_else_needs_the_key(served):
    assert httpx.get(f"{served.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/models/digits", "/metrics", "/openapi.json"):
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "Basic abc"}):
            response = httpx.get(served.url + path, headers=headers)
            assert response.status_code == 401 and "API key" in response.json()["error"], (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
        assert httpx.get(served.url + path, headers=served.headers).status_code == 200


def test_triton_client_reads_metadata_and_infers_as_the_runtime_does(served):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    headers = served.headers
    assert client.is_server_live() and client.is_model_ready("digits", headers=dict(headers))
    version = served.models[0].version
    metadata = client.get_model_metadata("digits", model_version=version, headers=dict(headers))
    assert metadata["versions"] == [version] and metadata["parameters"]["backend"] == "eager"
    x = digits(5)
    tensor = triton.InferInput("input", [5, 8, 8, 1], "UINT8")
    tensor.set_data_from_numpy(x[..., None])
    result = client.infer("digits", [tensor], headers=dict(headers), request_id="r-7")  # it adds headers to it
    expected = served.models[0].runtime.logits(x[:, None])
    assert np.allclose(result.as_numpy("logits"), expected.numpy(), atol=1e-5)
    assert result.get_response()["id"] == "r-7"
    wrong = httpx.get(f"{served.url}/v2/models/digits/versions/000000000000", headers=headers)
    assert wrong.status_code == 404 and version in wrong.json()["error"]


def test_upload_api_predicts_as_gpuvision_predict_does(served, tiny_model, tmp_path):
    import gpuvision

    images = digits(3)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png(image))
    expected = gpuvision.load(tiny_model, device="cpu").predict(paths, top_k=3, tta=False)
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    answer = httpx.post(f"{served.url}/models/digits/predict?top_k=3", files=files, headers=served.headers).json()
    raw = httpx.post(f"{served.url}/models/digits/predict?top_k=3", content=paths[0].read_bytes(),
                     headers={**served.headers, "Content-Type": "image/png"}).json()
    predictions = answer["predictions"] + raw["predictions"]
    assert [p["image"] for p in predictions] == ["0.png", "1.png", "2.png", "body"]
    assert len({p["id"] for p in predictions}) == 4 and answer["model_version"] == served.models[0].version
    for got, want in zip(predictions, expected + expected[:1]):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want]
        assert np.allclose([t["probability"] for t in got["top"]], [t["probability"] for t in want], atol=1e-5)


def bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 Mpx in some 10 KB
    return buffer.getvalue()


def test_bad_input_gets_a_4xx_json_error(served):
    url, headers = served.url, served.headers
    good = png(digits(1)[0])
    cases = [
        ("post", "/models/digits/predict", {"content": b"not an image"}, 400),
        ("post", "/models/digits/predict", {"content": good[: len(good) // 2]}, 400),  # truncated
        ("post", "/models/digits/predict", {"content": bomb()}, 400),
        ("post", "/models/digits/predict", {"content": b""}, 400),
        ("post", "/models/digits/predict?top_k=0", {"content": good}, 400),
        ("post", "/models/digits/predict", {"files": [("file", ("a.png", good))] * 65}, 400),
        ("post", "/models/nope/predict", {"content": good}, 404),
        ("post", "/v2/models/digits/infer", {"content": b"{malformed"}, 400),
        ("post", "/v2/models/digits/infer", {"json": {"inputs": [{"name": "input", "datatype": "UINT8",
                                                                  "shape": [1, 8, 8, 3], "data": [0] * 192}]}}, 400),
        ("post", "/v2/models/digits/infer", {"json": {"inputs": [{"name": "input", "datatype": "FP64",
                                                                  "shape": [1, 1, 8, 8], "data": [0] * 64}]}}, 400),
        ("post", "/v2/models/nope/infer", {"json": uint8_request(digits(1))}, 404),
        ("post", "/v2/models/digits/versions/1/infer", {"json": uint8_request(digits(1))}, 404),
        ("post", "/v2/models/digits/infer", {"content": b"\x1f\x8b garbage", "headers": {"Content-Encoding": "gzip"}},
         400),
        ("get", "/v2/models/digits/nowhere", {}, 404),
    ]
    for method, path, kwargs, status in cases:
        kwargs = {**kwargs, "headers": {**headers, **kwargs.get("headers", {})}}
        response = getattr(httpx, method)(url + path, **kwargs)
        assert response.status_code == status and isinstance(response.json()["error"], str), (path, response.text)
    assert httpx.get(f"{url}/v2/health/live").status_code == 200  # still serving


def test_a_body_over_the_limit_gets_413_even_compressed(served):
    big = uint8_request(digits(64))
    big["inputs"][0]["data"] = [255] * 400_000  # ~2 MB of JSON, over the test server's 0.5 MB
    body = json.dumps(big).encode()
    for content, extra in ((body, {}), (gzip.compress(body), {"Content-Encoding": "gzip"})):
        response = httpx.post(f"{served.url}/v2/models/digits/infer", content=content,
                              headers={**served.headers, **extra})
        assert response.status_code == 413 and "max-body-mb" in response.json()["error"]


def test_sixteen_concurrent_requests_are_batched(served):
    from http.client import HTTPConnection

    def stats():
        response = httpx.get(f"{served.url}/v2/models/digits/stats", headers=served.headers)
        return response.json()["model_stats"][0]

    host, port = served.url.removeprefix("http://").split(":")
    connections = [HTTPConnection(host, int(port), timeout=60) for _ in range(16)]
    body, headers = json.dumps(uint8_request(digits(1))), {**served.headers, "Content-Type": "application/json"}
    before = stats()
    for connection in connections:  # all sent before any answer is read: 16 requests in flight at once
        connection.request("POST", "/v2/models/digits/infer", body, headers)
    statuses = [connection.getresponse().status for connection in connections]
    for connection in connections:
        connection.close()
    after = stats()
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert statuses == [200] * 16 and inferences == 16 and executions < inferences, (inferences, executions)


def test_a_full_queue_gets_503_with_retry_after(served):
    from gpuvision.config import ServeConfig
    from gpuvision.serve.app import build_app

    # The same model, in an app whose batcher never starts (no lifespan): the first request fills the queue.
    app = build_app(served.models, ServeConfig(models=["digits"], max_queue=1).validate())

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.create_task(client.post("/v2/models/digits/infer", json=uint8_request(digits(1))))
            await asyncio.sleep(0.5)
            try:
                return await client.post("/v2/models/digits/infer", json=uint8_request(digits(1)))
            finally:
                first.cancel()

    response = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "retry" in response.json()["error"]


def test_metrics_are_prometheus_text_labelled_by_model_and_version(served):
    httpx.post(f"{served.url}/v2/models/digits/infer", json=uint8_request(digits(2)), headers=served.headers)
    text = httpx.get(f"{served.url}/metrics", headers=served.headers).text
    labels = f'{{model="digits",version="{served.models[0].version}"}}'
    for name in ("request_success_total", "request_failure_total", "count_total", "exec_count_total",
                 "queue_seconds_count", "compute_seconds_count", "pending_request_count"):
        assert f"gpuvision_inference_{name}{labels}" in text, name


def test_no_5xx_from_schemathesis_over_the_openapi_document(served):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_dict(httpx.get(f"{served.url}/openapi.json", headers=served.headers).json())
    deadline, calls = time.monotonic() + 60, []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if time.monotonic() > deadline:  # bounded in time as well as in examples
                return
            if "name" in (case.path_parameters or {}):  # the served model, so bodies reach the decoders
                case.path_parameters["name"] = "digits"
            response = case.call(base_url=served.url, headers=served.headers, timeout=30)
            calls.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        check()
    assert len(calls) >= 20 and any(status >= 400 for status in calls)


def test_ready_model_parameters_say_which_runtime_and_why(served):
    response = httpx.get(f"{served.url}/v2/models/digits", headers=served.headers).json()
    assert response["parameters"]["runtime_choice"] == "asked" and response["parameters"]["precision"] == "fp32"
