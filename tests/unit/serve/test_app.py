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


def test_every_prediction_has_an_id_that_feedback_labels_once(served):
    url, headers = served.url, served.headers
    infer = f"{url}/v2/models/digits/infer"
    anonymous = httpx.post(infer, json=uint8_request(digits(1)), headers=headers).json()
    assert len(anonymous["id"]) == 32 and anonymous["parameters"]["prediction_ids"] == [anonymous["id"]]
    named = httpx.post(infer, json={**uint8_request(digits(3)), "id": "batch-7"}, headers=headers).json()
    assert named["id"] == "batch-7" and named["parameters"]["prediction_ids"] == ["batch-7/0", "batch-7/1", "batch-7/2"]
    uploaded = httpx.post(f"{url}/models/digits/predict", content=png(digits(1)[0]),
                          headers={**headers, "Content-Type": "image/png"}).json()["predictions"][0]

    feedback = f"{url}/models/digits/feedback"
    predicted = int(np.argmax(named["outputs"][0]["data"][10:20]))  # the second image's logits
    answer = httpx.post(feedback, json={"id": "batch-7/1", "label": str(predicted)}, headers=headers)
    assert answer.status_code == 200 and answer.json() == {"id": "batch-7/1", "label": str(predicted),
                                                           "predicted": str(predicted), "correct": True}
    assert httpx.post(feedback, json={"id": uploaded["id"], "label": "3"}, headers=headers).json()["correct"] == (
        uploaded["top"][0]["class"] == "3")
    cases = [({"id": "batch-7/1", "label": "0"}, 409), ({"id": "no-such-id", "label": "0"}, 404),
             ({"id": anonymous["id"], "label": "cat"}, 400), ({"id": anonymous["id"]}, 400),
             ({"id": [anonymous["id"]], "label": "0"}, 400), ("not an object", 400)]
    for body, status in cases:
        response = httpx.post(feedback, json=body, headers=headers)
        assert response.status_code == status and isinstance(response.json()["error"], str), (body, response.text)
    for content in (b"{broken", b"", b"\xff\xfe"):
        response = httpx.post(feedback, content=content, headers=headers)
        assert response.status_code == 400 and "error" in response.json()
    assert httpx.post(f"{url}/models/nope/feedback", json={"id": "x", "label": "0"}, headers=headers).status_code == 404
    assert httpx.post(feedback, json={"id": "x", "label": "0"}).status_code == 401


def test_the_monitor_route_and_metrics_report_the_window(served):
    url, headers = served.url, served.headers
    httpx.post(f"{url}/v2/models/digits/infer", json=uint8_request(digits(4)), headers=headers)
    report = httpx.get(f"{url}/models/digits/monitor", headers=headers).json()
    assert report["model"] == "digits" and report["version"] == served.models[0].version
    assert report["window"]["predictions"] >= 4 and report["serving"]["requests"] >= 1
    assert report["serving"]["latency_ms"]["p50"] > 0 and report["serving"]["mean_batch"] >= 1
    # the untrained fixture model was made without a reference: nothing to compare with, and it says so
    assert report["accuracy"]["verdict"] == "no reference" and report["reference"] is None and report["notes"]
    assert report["drift"]["brightness"]["state"] == "no reference"
    assert httpx.get(f"{url}/models", headers=headers).json()["models"][0]["classes"] == [str(i) for i in range(10)]
    text = httpx.get(f"{url}/metrics", headers=headers).text
    version = served.models[0].version
    assert f'gpuvision_monitor_window_predictions{{model="digits",version="{version}"}}' in text
    assert f'gpuvision_monitor_psi{{model="digits",signal="brightness",version="{version}"}} NaN' in text


def test_the_page_needs_no_key_and_runs_only_its_own_files(served):
    page = httpx.get(served.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"] and "<script src=" in page.text
    assert "http" not in page.text.replace('content="width=device-width', "")  # nothing fetched from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{served.url}/page/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    assert httpx.get(f"{served.url}/page/../app.py").status_code == 404
    assert httpx.get(f"{served.url}/models").status_code == 401  # the page asks for the key for the API
