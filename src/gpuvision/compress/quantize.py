"""Post-training static int8 quantisation, calibrated on training images.

The saved int8 model is ONNX with QDQ nodes, per-channel 8-bit weights and activations, run by onnxruntime:
 * it loads without unpickling anything (protobuf), whereas a quantised torch.export program would have to be
   read back with `torch.export.load`, which can fall back to `torch.load(weights_only=False)` and `pickle.loads`
   for parts of the archive; and it needs no compile step when predict or serve start;
 * measured on the project's AVX2-only CPU (BENCHMARKS.md): at equal model, torchao's PT2E int8 compiled by
   inductor took 148 ms at batch 1 against onnxruntime's 6.4 ms, was about as fast at batch 64, lost 5.5 points of
   accuracy against onnxruntime's 0.1, and needs minutes of compiling in every process that loads it.
`pt2e_int8` (torchao's PT2E flow with X86InductorQuantizer) is kept for that comparison: the benchmark measures
it beside the saved onnxruntime model.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..artifact import WEIGHT_FILES, Inference, Manifest, ModelDir
from ..errors import Unsupported, require
from ..files import atomic_write
from ..runtime import build_network
from ..runtime.calibration import temperature
from ..runtime.onnx import add_metadata, export_metadata, onnx_model, serialize

# The operators with weights worth 8 bits; a batch-norm left after a max-pool (fastnet) stays fp32 beside them.
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


class _Calibration:
    """onnxruntime's calibration reader: batches of normalised training images."""

    def __init__(self, input_name: str, inputs: torch.Tensor, batch_size: int = 64):
        self.batches = iter([{input_name: inputs[i : i + batch_size].contiguous().numpy()}
                             for i in range(0, len(inputs), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def quantize_onnx(fp32_path: Path, out_path: Path, calibration: torch.Tensor, metadata: dict[str, str]) -> None:
    """Static QDQ int8 quantisation of an fp32 ONNX file (per-channel weights), calibrated on `calibration`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32_path.with_name(fp32_path.stem + "-prepared.onnx")
    quantized = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    try:
        # Symbolic shape inference trips over the exporter's Reshape of the pooled features; ONNX's own
        # shape inference is enough for the convolution/matmul graphs we quantise.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load_model(str(prepared), load_external_data=False).graph
        input_name = graph.input[0].name
        # The convolution that reads the image has few input channels (little to gain) and, in fastnet, the
        # whitening filters' wide output range (much to lose): it stays fp32.
        first = [n.name for n in graph.node if n.op_type == "Conv" and input_name in n.input]
        # uint8 weights (U8U8): on CPUs without VNNI, onnxruntime's uint8 x int8 kernels use VPMADDUBSW, whose
        # 16-bit sums saturate; measured on an AVX2-only EPYC, U8S8 fell to chance accuracy. U8U8 cannot saturate
        # on any x86 CPU, and the saved file may run on another machine than the one that quantised it.
        quantize_static(str(prepared), str(quantized), _Calibration(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=first, op_types_to_quantize=QUANTIZED_OPS)
        proto = onnx.load_model(str(quantized))
        add_metadata(proto, metadata)
        atomic_write(out_path, lambda p: onnx.save_model(proto, p, save_as_external_data=False))
    finally:
        prepared.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)


def int8_weight_fraction(path: Path) -> float:
    """The fraction of the ONNX file's weight elements (initialisers of rank >= 2) stored as 8-bit integers."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_model(str(path))
    sizes = {}
    for init in proto.graph.initializer:
        if len(init.dims) >= 2:
            sizes[init.data_type] = sizes.get(init.data_type, 0) + numpy_helper.to_array(init).size
    eight_bit = sizes.get(onnx.TensorProto.INT8, 0) + sizes.get(onnx.TensorProto.UINT8, 0)
    return eight_bit / max(sum(sizes.values()), 1)


def make_int8(ctx, source: ModelDir, out: Path) -> Manifest:
    """Quantise the model in `source` into the ONNX model directory `out`."""
    from ..models import count_params
    from . import flops_of, write_variant

    m = source.manifest
    require(m.format == "safetensors", f"{source.path}: int8 quantisation needs a PyTorch model; this one is "
            f"{m.format} (already quantised?)", Unsupported)
    net = build_network(source)
    calibration = ctx.inputs(ctx.calibration_images(), m)
    meta = export_metadata(m.input, m.classes, m.tta_level, m.architecture["name"],
                           temperature=temperature(m.calibration, False))
    out.mkdir(parents=True)
    fp32 = out / ".fp32.onnx"
    weights = WEIGHT_FILES["onnx"]
    try:
        atomic_write(fp32, lambda p: Path(p).write_bytes(serialize(onnx_model(net, calibration[:2], meta))))
        quantize_onnx(fp32, out / weights, calibration, meta)
    finally:
        fp32.unlink(missing_ok=True)
    record = {"method": "int8", "library": "onnxruntime.quantization",
              "scheme": "static QDQ, per-channel uint8 weights, uint8 activations, MinMax calibration; the first "
                        "convolution stays fp32",
              "calibration_images": len(calibration), "int8_weight_fraction": int8_weight_fraction(out / weights)}
    manifest = replace(m, format="onnx", weights=weights, inference=Inference("onnxruntime", "int8"),
                       params=count_params(net), flops=flops_of(net, calibration[:1]))
    return write_variant(ctx, source, out, manifest, record, [weights])


def pt2e_int8(net: nn.Module, calibration: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """torchao's PT2E int8 flow (X86InductorQuantizer): an exported program with quantise/dequantise nodes, to run
    compiled with inductor's freezing (as runtime.InductorRuntime does). Not saved: see the module docstring."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    net = copy.deepcopy(net).eval()
    for module in net.modules():
        # The quantizer matches aten.conv2d only; padding="same" exports as another overload.
        if isinstance(module, nn.Conv2d) and module.padding == "same" and all(k % 2 for k in module.kernel_size):
            module.padding = tuple(k // 2 for k in module.kernel_size)
    example = calibration[:2].contiguous()
    batch = torch.export.Dim("batch", min=1, max=65536)
    graph = torch.export.export(net, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start : start + batch_size].contiguous())
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return converted
