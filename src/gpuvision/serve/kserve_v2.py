"""The KServe / Open Inference Protocol v2 over HTTP, with Triton's binary tensor data and classification
extensions: request bytes -> a normalised batch, logits -> response bytes. No HTTP framework here.

Input `input`: UINT8 [N, H, W, C] pixels, or FP32 [N, C, H, W] already normalised per the model's input spec.
Outputs `logits` and `probabilities`, FP32 [N, K]; with an output's `classification: k` parameter, its top k as
BYTES "score:index:label". Tensor data travels as JSON (`data`) or, with the binary extension, as raw
little-endian bytes after a JSON header of `Inference-Header-Content-Length` bytes (`binary_data_size` per
tensor). tritonclient.http sends inputs that way by default and asks for binary outputs when it names none.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..artifact import MAX_CLASSES
from ..data.input_spec import InputSpec, normalise
from ..errors import BadInput, require
from ..files import parse_json
from ..runtime.calibration import probabilities
from ..version import __version__
from .transport import TooLarge, declared_length

INPUT = "input"
OUTPUTS = ("logits", "probabilities")
DTYPES = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification", "statistics"]
MAX_DEPTH = 16  # a request nests 7 deep at most: object, inputs, tensor, and a 4-d `data`
VALUE_TEXT = 24  # bytes a number takes at most as JSON text ("-1.2345678901234567e-05,"), for the size bound
HEADER_SLACK = 64 << 10  # the rest of a JSON header: names, parameters, whitespace


@dataclass(frozen=True)
class Output:
    """A requested output: its name, whether as binary data, and the top-k classification asked for (0: none)."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    """A decoded inference request: the images as a normalised fp32 N x C x H x W batch, and what to answer."""

    x: torch.Tensor
    outputs: list[Output]
    id: str | None = None
    pixels: torch.Tensor | None = None  # the uint8 N x C x H x W pixels x came from (None for FP32 input)


def _object(value, what: str) -> dict:
    require(value is None or isinstance(value, dict), f"{what} must be a JSON object", BadInput)
    return value or {}


def _int(value, what: str, low: int = 0, high: int | None = None) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high), f"{what} must be an integer in {low}..{high or 'inf'}", BadInput)
    return value


def max_values(spec: InputSpec, max_batch: int) -> int:
    """The most tensor values one request may carry: max_batch images."""
    return max_batch * spec.channels * spec.size[0] * spec.size[1]


def max_request_bytes(spec: InputSpec, max_batch: int, binary: bool) -> int:
    """The largest infer request body this model can need: max_batch images' values as JSON text, or with the
    binary extension as raw bytes after a small JSON header. Anything larger is refused before it is parsed."""
    return HEADER_SLACK + max_values(spec, max_batch) * (4 if binary else VALUE_TEXT)


def decode_request(body: bytes, header_length: str | None, spec: InputSpec, max_batch: int) -> InferRequest:
    """The images and the wanted outputs of an infer request body (header_length: the binary extension's header)."""
    if header_length is None:
        header, data = body, b""
    else:
        length = declared_length(header_length, 12)
        require(length is not None and length <= len(body), f"{HEADER_LENGTH} {header_length[:20]!r} is not a "
                f"length within the {len(body)}-byte body", BadInput)
        header, data = body[:length], body[length:]
    # The values this model can take, checked before any parsing: by size, then by separators (C-speed counts).
    limit, values = max_request_bytes(spec, max_batch, binary=False), max_values(spec, max_batch)
    what = f"{max_batch} images of {spec.channels} x {spec.size[0]} x {spec.size[1]} values"
    if len(header) > limit:
        raise TooLarge(f"a JSON request for this model is at most {limit:,} bytes ({what}); this one is "
                       f"{len(header):,}")
    if header.count(b",") > values + HEADER_SLACK // 64:
        raise TooLarge(f"the request holds more values than this model takes ({what}); send at most that")
    doc = parse_json(header, "the request", BadInput, MAX_DEPTH)
    require(isinstance(doc, dict), "the request must be a JSON object with `inputs`", BadInput)
    request_id = doc.get("id")
    require(request_id is None or isinstance(request_id, str), "`id` must be a string", BadInput)
    inputs = doc.get("inputs")
    require(isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], dict),
            f"`inputs` must hold exactly one tensor, named {INPUT!r}", BadInput)
    outputs = _outputs(doc)  # first: cheap, and refused before any array is built
    x, used, pixels = _input(inputs[0], data, spec, max_batch)
    require(used == len(data), f"the body has {len(data) - used} bytes of binary data that no tensor claims",
            BadInput)
    return InferRequest(x, outputs, request_id, pixels)


def _input(tensor: dict, data: bytes, spec: InputSpec, max_batch: int
           ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """The input tensor, normalised, the bytes of binary data it used, and its uint8 pixels (None for FP32)."""
    c, (h, w) = spec.channels, spec.size
    layouts = {"UINT8": ("N, H, W, C pixels", [h, w, c]), "FP32": ("N, C, H, W normalised", [c, h, w])}
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    require(name == INPUT, f"the input is named {name!r}; this model's input is {INPUT!r}", BadInput)
    require(datatype in layouts, f"input datatype {datatype!r}: use UINT8 [N, {h}, {w}, {c}] pixels or FP32 "
            f"[N, {c}, {h}, {w}] normalised values", BadInput)
    what, rest = layouts[datatype]
    require(isinstance(shape, list) and len(shape) == 4 and all(type(s) is int for s in shape)  # not bool
            and shape[1:] == rest and 1 <= shape[0] <= max_batch,
            f"input shape {shape}: {datatype} takes [{what}] = [1..{max_batch}, {', '.join(map(str, rest))}] "
            f"(at most --max-batch-size {max_batch} images a request)", BadInput)
    dtype, count = DTYPES[datatype], int(np.prod(shape))
    size = _object(tensor.get("parameters"), "input parameters").get("binary_data_size")
    if size is not None:
        _int(size, "binary_data_size")
        require(size == count * dtype.itemsize and size <= len(data), f"binary_data_size {size}: a {datatype} "
                f"{shape} tensor is {count * dtype.itemsize} bytes (the body holds {len(data)})", BadInput)
        array = np.frombuffer(data[:size], dtype).copy()  # a writable copy for torch
    else:
        array, size = _json_data(tensor.get("data"), datatype, shape), 0
    array = array.reshape(shape)
    if datatype == "FP32":
        require(bool(np.isfinite(array).all()), "FP32 input holds NaN or infinity", BadInput)
        return torch.from_numpy(array), size, None
    # The strides the runtime was warmed up with: a compiled backend guards on exact strides, and a permuted grey
    # batch (C = 1) is "contiguous" to .contiguous() with other strides: a multi-second recompile per batch size.
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2)
    return normalise(pixels, spec).clone(memory_format=torch.contiguous_format), size, pixels


def _json_data(data, datatype: str, shape: list[int]) -> np.ndarray:
    """A tensor's JSON `data`, flat or nested as its shape, checked value by value against its datatype: UINT8
    takes integers in 0..255, FP32 numbers; never strings, booleans or null (numpy would convert those)."""
    require(isinstance(data, list), "the input has neither `data` nor `binary_data_size`", BadInput)
    flat, count = _flat(data, shape), int(np.prod(shape))
    require(len(flat) == count, f"input `data` holds {len(flat)} values; the shape {shape} needs {count}", BadInput)
    integers = datatype == "UINT8"
    kinds = {int} if integers else {int, float}
    require(set(map(type, flat)) <= kinds, f"{datatype} input `data` must hold only "  # exact types: not bool
            f"{'integers' if integers else 'numbers'} (no strings, booleans, null or lists)", BadInput)
    try:
        values = np.array(flat, dtype=np.int64 if integers else np.float64)
    except OverflowError as e:
        raise BadInput(f"{datatype} input `data` holds a number out of range") from e
    if integers:
        require(bool(((values >= 0) & (values <= 255)).all()), "UINT8 input `data` must be integers in 0..255",
                BadInput)
    return values.astype(DTYPES[datatype])


def _flat(data: list, shape: list[int]) -> list:
    """JSON tensor data as one flat list: given flat, or nested exactly as `shape` (row-major)."""
    if not data or not isinstance(data[0], list):
        return data
    require(len(data) == shape[0], f"input `data` is nested as another shape than {shape}", BadInput)
    flat = data
    for size in shape[1:]:
        require(all(isinstance(row, list) and len(row) == size for row in flat),
                f"input `data` is nested as another shape than {shape}", BadInput)
        flat = [x for row in flat for x in row]
    return flat


def _outputs(doc: dict) -> list[Output]:
    binary = _object(doc.get("parameters"), "request parameters").get("binary_data_output", False)
    require(isinstance(binary, bool), "binary_data_output must be true or false", BadInput)
    wanted = doc.get("outputs")
    if wanted is None:
        return [Output(name, binary) for name in OUTPUTS]
    require(isinstance(wanted, list) and all(isinstance(o, dict) for o in wanted),
            "`outputs` must be a list of {name, parameters}", BadInput)
    outputs = []
    for o in wanted:
        require(o.get("name") in OUTPUTS, f"unknown output {str(o.get('name'))[:100]!r}; this model has "
                f"{', '.join(OUTPUTS)}", BadInput)
        require(o["name"] not in {out.name for out in outputs}, f"output {o['name']!r} is asked for twice; ask "
                "for each output once", BadInput)
        params = _object(o.get("parameters"), f"output {o['name']} parameters")
        as_binary = params.get("binary_data", binary)
        require(isinstance(as_binary, bool), "binary_data must be true or false", BadInput)
        outputs.append(Output(o["name"], as_binary,
                              _int(params.get("classification", 0), "classification", 0, MAX_CLASSES)))
    return outputs


def encode_response(request: InferRequest, logits: torch.Tensor, model: str, version: str, classes: list[str],
                    prediction_ids: list[str] | None = None, temperature: float = 1.0
                    ) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or a JSON header followed by binary tensors; `prediction_ids`
    (one per image, for feedback) go in the response's parameters; `probabilities` are calibrated by `temperature`
    (the manifest's), `logits` are the model's own."""
    values = {"logits": logits, "probabilities": probabilities(logits, temperature)}
    entries, blobs = [], []
    for out in request.outputs:
        value = values[out.name]
        if out.classification:
            scores, indices = value.topk(min(out.classification, len(classes)), dim=1)
            data = [f"{s:f}:{i}:{classes[i]}" for s, i in zip(scores.flatten().tolist(), indices.flatten().tolist())]
            entry = {"name": out.name, "datatype": "BYTES", "shape": list(scores.shape)}
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (d.encode() for d in data)) if out.binary else b""
        else:
            entry = {"name": out.name, "datatype": "FP32", "shape": list(value.shape)}
            array = value.numpy().astype("<f4", copy=False)
            data, raw = (None, array.tobytes()) if out.binary else (array.flatten().tolist(), b"")
        if out.binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        entries.append(entry)
    doc = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    if prediction_ids is not None:
        doc["parameters"] = {"prediction_ids": prediction_ids}
    header = json.dumps(doc).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def server_metadata() -> dict:
    return {"name": "gpuvision", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(name: str, version: str, spec: InputSpec, classes: list[str], parameters: dict) -> dict:
    """The model's metadata. `input` is listed in both of the forms it takes (clients pick by datatype)."""
    c, (h, w), k = spec.channels, spec.size, len(classes)
    return {"name": name, "versions": [version], "platform": "gpuvision",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, h, w, c]},
                       {"name": INPUT, "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, k]} for o in OUTPUTS],
            "parameters": {**parameters, "classes": classes, "mean": list(spec.mean), "std": list(spec.std)}}


# OpenAPI schemas of the JSON forms (the binary form is the same JSON header followed by the tensors' bytes).
_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"],
           "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                          "shape": {"type": "array", "items": {"type": "integer"}},
                          "data": {"type": "array", "items": {}}, "parameters": {"type": "object"}}}
INFER_REQUEST_SCHEMA = {
    "type": "object", "required": ["inputs"],
    "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                   "inputs": {"type": "array", "items": _TENSOR},
                   "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                       "name": {"type": "string", "enum": list(OUTPUTS)}, "parameters": {"type": "object"}}}}}}
INFER_RESPONSE_SCHEMA = {
    "type": "object", "required": ["model_name", "outputs"],
    "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                   "parameters": {"type": "object", "properties": {"prediction_ids": {
                       "type": "array", "items": {"type": "string"}}}},
                   "outputs": {"type": "array", "items": _TENSOR}}}
