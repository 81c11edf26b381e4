"""The onnxruntime backend, and the ONNX export it shares with `gpuvision export` and int8 quantisation.

Models are exported with the dynamo-based exporter, one self-contained file (weights inside), input `input`:
normalised FP32 N x C x H x W, or with `uint8_spec` UINT8 N x H x W x C pixels whose normalisation is in the graph.
Sessions are made from bytes, so a decrypted model never touches the disk.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from ..data.images import RESIZE_FILTER, RESIZE_RULE
from ..data.input_spec import InputSpec
from ..errors import IntegrityError, require
from .base import Runtime

INPUT, OUTPUT = "input", "logits"
MAX_BATCH = 65536


def export_metadata(spec: InputSpec, classes: list[str], tta_level: int, architecture: str,
                    uint8_input: bool = False, temperature: float = 1.0) -> dict[str, str]:
    """What a consumer needs besides the graph: class names, how to resize and scale the pixels, and the
    temperature that calibrates the logits (JSON strings)."""
    values = {"classes": classes, "mean": list(spec.mean), "std": list(spec.std), "input_size": list(spec.size),
              "channels": spec.channels, "value_range": [0, 255], "tta_level": tta_level, "architecture": architecture,
              "input_layout": "NHWC uint8 pixels" if uint8_input else "NCHW float32, normalised",
              "resize_filter": RESIZE_FILTER, "temperature": temperature}
    notes = {"normalisation": "x = (pixels - mean) / std per channel, pixels in value_range" +
             (" (inside the graph)" if uint8_input else ""), "resize": RESIZE_RULE,
             "probabilities": "softmax(logits / temperature): temperature scaling fitted on the validation split",
             "producer": "gpuvision"}
    return {**{k: json.dumps(v) for k, v in values.items()}, **notes}


def onnx_model(net: nn.Module, example: torch.Tensor, metadata: dict[str, str], dynamic_batch: bool = True,
               opset: int | None = None, uint8_spec: InputSpec | None = None):
    """Export an eager fp32 network to an ONNX ModelProto (weights inside, metadata attached).

    example: a normalised N x C x H x W batch; with uint8_spec the graph takes N x H x W x C uint8 pixels."""
    net = net.eval().to(memory_format=torch.contiguous_format)
    if uint8_spec is not None:
        net = nn.Sequential(uint8_spec.module("NHWC"), net).eval()
        example = torch.zeros(len(example), *uint8_spec.size, uint8_spec.channels, dtype=torch.uint8)
    example = example.contiguous()
    if dynamic_batch and len(example) < 2:  # export specialises a dimension of size 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None
    program = torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                input_names=[INPUT], output_names=[OUTPUT], verbose=False)
    proto = program.model_proto
    add_metadata(proto, metadata)
    return proto


def add_metadata(proto, metadata: dict[str, str]) -> None:
    import onnx

    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept + [onnx.StringStringEntryProto(key=k, value=v) for k, v in metadata.items()])


def serialize(proto) -> bytes:
    return proto.SerializeToString()


class OnnxRuntime(Runtime):
    """An onnxruntime session behind the Runtime interface (CUDA provider where the device is a GPU and the
    provider is installed, else the CPU)."""

    backend = "onnxruntime"

    def __init__(self, model: bytes, spec: InputSpec, classes: list[str], tta_level: int, device: torch.device,
                 precision: str, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(spec, classes, tta_level, device, precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # quantised graphs log harmless warnings about unused initialisers
        # Idle worker threads sleep instead of spinning: on a CPU shared with a server's other threads (or other
        # processes) spinning took the cores the model needed (serving at batch 1: 24-26 ms with it, 7-14 without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(model, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a malformed graph
            if type(e).__module__.startswith("onnxruntime"):
                raise IntegrityError(f"not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from e
            raise
        self.input = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()[0].shape[-1]
        require(not isinstance(outputs, int) or outputs == len(classes), f"the model lists {len(classes)} classes for "
                f"a network of {outputs} outputs (the model directory is damaged)", IntegrityError)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logits,) = self.session.run(None, {self.input: array})
        return torch.from_numpy(logits).to(x.device)


def onnx_metadata(model: bytes) -> dict[str, str]:
    """The metadata properties of a serialised ONNX model."""
    import onnx

    return {p.key: p.value for p in onnx.load_model_from_string(model).metadata_props}
