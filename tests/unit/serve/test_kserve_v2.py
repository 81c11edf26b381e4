"""The KServe v2 protocol on its own: JSON and binary tensors in, JSON and binary outputs back, bad input refused."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from gpuvision.data.input_spec import InputSpec, normalise
from gpuvision.errors import BadInput
from gpuvision.serve import kserve_v2
from gpuvision.serve.kserve_v2 import decode_request, encode_response
from gpuvision.serve.transport import TooLarge

SPEC = InputSpec((2, 3), 3, (10.0, 20.0, 30.0), (2.0, 4.0, 8.0))
CLASSES = ["a", "b", "c"]


def binary_body(doc: dict, *blobs: bytes) -> tuple[bytes, str]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), str(len(header))


def pixels(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 2, 3, 3), dtype=np.uint8)  # N x H x W x C


def test_uint8_pixels_as_json_or_binary_give_the_normalised_batch():
    x = pixels()
    expected = normalise(torch.from_numpy(x).permute(0, 3, 1, 2), SPEC)
    tensor = {"name": "input", "datatype": "UINT8", "shape": list(x.shape)}
    as_json = decode_request(json.dumps({"inputs": [{**tensor, "data": x.tolist()}]}).encode(), None, SPEC, 8)
    body, length = binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}]}, x.tobytes())
    as_binary = decode_request(body, length, SPEC, 8)
    assert torch.equal(as_json.x, expected) and torch.equal(as_binary.x, expected)
    grey = InputSpec((2, 3), 1, (0.0,), (1.0,))
    for spec, c in ((SPEC, 3), (grey, 1)):  # the strides of the runtime's warm-up batches: nothing recompiles
        x = decode_request(json.dumps({"inputs": [{**tensor, "shape": [2, 2, 3, c], "data": [0] * 12 * c}]}).encode(),
                           None, spec, 8).x
        assert x.stride() == torch.zeros(2, c, 2, 3).stride()
    assert [o.name for o in as_json.outputs] == ["logits", "probabilities"] and not as_json.outputs[0].binary


def test_fp32_input_is_taken_as_normalised_nchw():
    x = np.random.default_rng(1).normal(size=(1, 3, 2, 3)).astype(np.float32)
    doc = {"id": "r1", "parameters": {"binary_data_output": True},
           "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 3],
                       "parameters": {"binary_data_size": x.nbytes}}]}
    request = decode_request(*binary_body(doc, x.tobytes()), SPEC, 8)
    assert torch.equal(request.x, torch.from_numpy(x)) and request.id == "r1"
    assert all(o.binary for o in request.outputs)


@pytest.mark.parametrize("tensor, message", [
    ({"name": "image", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [0] * 18}, "named"),
    ({"name": "input", "datatype": "INT64", "shape": [1, 2, 3, 3], "data": [0] * 18}, "datatype"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 3, 2, 3], "data": [0] * 18}, "shape"),
    ({"name": "input", "datatype": "UINT8", "shape": [9, 2, 3, 3], "data": [0] * 162}, "max-batch-size"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [0] * 17}, "holds 17"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [256] + [0] * 17}, "0..255"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": ["x"] * 18}, "only integers"),
    ({"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 3], "data": [float("nan")] * 18}, "NaN"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3]}, "neither"),
    # issue 22: each datatype strictly (numpy would turn "7" and true into numbers); a bool is not a dimension
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": ["7"] * 18}, "only integers"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [True] * 18}, "only integers"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [1.5] * 18}, "only integers"),
    ({"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 3], "data": [None] * 18}, "only numbers"),
    ({"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 3], "data": [10 ** 400] * 18}, "out of range"),
    ({"name": "input", "datatype": "UINT8", "shape": [True, 2, 3, 3], "data": [0] * 18}, "shape"),
    ({"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [[[[0] * 3] * 3] * 2] * 2},
     "nested as another shape"),
])
def test_a_wrong_tensor_is_refused_with_what_to_send(tensor, message):
    with pytest.raises(BadInput, match=message):
        decode_request(json.dumps({"inputs": [tensor]}).encode(), None, SPEC, 8)


@pytest.mark.parametrize("body, length, message", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"inputs": []}', None, "exactly one"),
    (b'{"inputs": [{"name": "input"}], "outputs": [{"name": "x"}]}', None, "unknown output"),
    (b'{"inputs": [{"name": "input"}]}', None, "datatype"),
    (b"{}", "99", "within"),
    (b"{}", "\u00b2", "within"),  # a latin-1 superscript two: str.isdigit() says yes, int() says no
    (b"{}", "9" * 5000, "within"),
    (b'{"inputs": [{"name": "input"}], "outputs": [{"name": "logits"}, {"name": "logits"}]}', None, "twice"),
])
def test_malformed_requests_are_refused(body, length, message):
    with pytest.raises(BadInput, match=message):
        decode_request(body, length, SPEC, 8)


def test_missing_or_extra_binary_bytes_and_unknown_outputs_are_refused():
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "parameters": {"binary_data_size": 18}}
    with pytest.raises(BadInput, match="holds 17"):
        decode_request(*binary_body({"inputs": [tensor]}, bytes(17)), SPEC, 8)
    with pytest.raises(BadInput, match="no tensor claims"):
        decode_request(*binary_body({"inputs": [tensor]}, bytes(19)), SPEC, 8)
    with pytest.raises(BadInput, match="unknown output"):
        decode_request(*binary_body({"inputs": [tensor], "outputs": [{"name": "x"}]}, bytes(18)), SPEC, 8)


def test_responses_in_json_and_binary_with_classification_and_the_id():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    tensor = {"name": "input", "datatype": "UINT8", "shape": [2, 2, 3, 3], "data": pixels().tolist()}
    doc = {"id": "42", "inputs": [tensor], "outputs": [
        {"name": "probabilities"}, {"name": "logits", "parameters": {"binary_data": True}}]}
    request = decode_request(json.dumps(doc).encode(), None, SPEC, 8)
    body, headers = encode_response(request, logits, "m", "v1", CLASSES)
    n = int(headers[kserve_v2.HEADER_LENGTH])
    head, blobs = json.loads(body[:n]), body[n:]
    assert head["id"] == "42" and head["model_name"] == "m" and head["model_version"] == "v1"
    probs, raw_logits = head["outputs"]
    assert np.allclose(probs["data"], torch.softmax(logits, 1).flatten().tolist()) and probs["shape"] == [2, 3]
    size = raw_logits["parameters"]["binary_data_size"]
    assert np.array_equal(np.frombuffer(blobs[:size], "<f4").reshape(2, 3), logits.numpy()) and len(blobs) == size
    doc["outputs"] = [{"name": "probabilities", "parameters": {"classification": 2, "binary_data": True}}]
    body, headers = encode_response(decode_request(json.dumps(doc).encode(), None, SPEC, 8), logits, "m", "v1",
                                    CLASSES)
    n = int(headers[kserve_v2.HEADER_LENGTH])
    [top] = json.loads(body[:n])["outputs"]
    strings, rest = [], body[n:]
    while rest:
        (k,) = struct.unpack("<I", rest[:4])
        strings.append(rest[4 : 4 + k].decode())
        rest = rest[4 + k :]
    assert top["datatype"] == "BYTES" and top["shape"] == [2, 2] and strings[0].endswith(":1:b")
    assert strings[2].endswith(":2:c") and float(strings[2].split(":")[0]) > 0.9
    plain, headers = encode_response(decode_request(json.dumps({"inputs": [tensor]}).encode(), None, SPEC, 8),
                                     logits, "m", "v1", CLASSES)
    assert headers["content-type"] == "application/json" and "id" not in json.loads(plain)


def test_absurdly_deep_json_is_bad_input_not_a_crash():
    with pytest.raises(BadInput, match="nested more than"):
        decode_request(b"[" * 30_000 + b"]" * 30_000, None, SPEC, 8)
    deep = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": 0}]}
    text = json.dumps(deep).replace('"data": 0', '"data": ' + "[" * 5000 + "0" + "]" * 5000)
    with pytest.raises(BadInput):
        decode_request(text.encode(), None, SPEC, 8)


def test_json_data_nested_as_the_shape_is_taken_and_a_body_past_what_the_model_needs_is_413():
    x = pixels()
    tensor = {"name": "input", "datatype": "UINT8", "shape": list(x.shape)}
    nested = decode_request(json.dumps({"inputs": [{**tensor, "data": x.tolist()}]}).encode(), None, SPEC, 8)
    flat = decode_request(json.dumps({"inputs": [{**tensor, "data": x.flatten().tolist()}]}).encode(), None, SPEC, 8)
    assert torch.equal(nested.x, flat.x)
    limit = kserve_v2.max_request_bytes(SPEC, 8, binary=False)
    huge = json.dumps({"inputs": [{**tensor, "data": [0] * limit}]}).encode()  # refused before it is parsed
    with pytest.raises(TooLarge, match="at most"):
        decode_request(huge, None, SPEC, 8)
    many = json.dumps({"inputs": [{**tensor, "data": [0] * 2000}]}).encode()  # small, but 2,000 values
    with pytest.raises(TooLarge, match="more values than this model takes"):
        decode_request(many, None, SPEC, 8)
