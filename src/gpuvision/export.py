"""Export a model directory to ONNX or a torch.export program (.pt2), checked against PyTorch on real test images.

    gpuvision export runs/cifar --format onnx          # -> runs/cifar/export/model.onnx
    gpuvision.export.export_model(ExportConfig("runs/cifar", format="pt2"))

ONNX goes through the dynamo-based exporter with a dynamic batch dimension and is run in onnxruntime; the .pt2 is
saved, re-loaded and run. Either way the logits on test images are compared with the eager PyTorch model, and the
export fails (nothing is written) if they differ by more than the tolerance. The files carry the class names and
the input normalisation (ONNX metadata, a gpuvision.json entry in the .pt2), so a consumer needs nothing else.

This module also registers the `onnx` model format: a model directory whose model.onnx runs in onnxruntime (the
int8 variants `compress` writes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .artifact import RUNTIMES, Model, load
from .config import ExportConfig
from .errors import UserError, require
from .files import atomic_write

ONNX_FILE = "model.onnx"
META_KEYS = ("classes", "mean", "std", "input_size", "channels", "value_range", "tta_level", "architecture")


# ------------------------------------------------------------------------------------------ metadata
def export_metadata(manifest: dict) -> dict[str, str]:
    """What a consumer needs besides the graph: class names and how to scale the pixels (JSON strings)."""
    inp = manifest["input"]
    values = {"classes": manifest["classes"], "mean": inp["mean"], "std": inp["std"], "input_size": inp["size"],
              "channels": inp["channels"], "value_range": inp.get("value_range", [0, 255]),
              "tta_level": manifest.get("tta_level", 0), "architecture": manifest.get("architecture", {}).get("name")}
    notes = {"normalisation": "x = (pixels - mean) / std, per channel, pixels in value_range, layout N x C x H x W",
             "producer": "gpuvision"}
    return {**{k: json.dumps(v) for k, v in values.items()}, **notes}


# ------------------------------------------------------------------------------------------ ONNX
def to_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str],
            dynamic_batch: bool = True, opset: int | None = None) -> None:
    """Export an eager fp32 network to one self-contained ONNX file (weights inside, metadata attached)."""
    import onnx

    net = net.eval().to(memory_format=torch.contiguous_format)
    example = example.contiguous()
    if dynamic_batch and len(example) < 2:  # export specialises a dimension of size 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    program = torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                verbose=False)
    proto = program.model_proto
    add_metadata(proto, metadata)
    # Weights stay inside the file: onnxruntime's quantisation tools need a single file, and so does a consumer.
    atomic_write(path, lambda p: onnx.save_model(proto, p, save_as_external_data=False))


def add_metadata(proto, metadata: dict[str, str]) -> None:
    import onnx

    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept + [onnx.StringStringEntryProto(key=k, value=v) for k, v in metadata.items()])


def read_onnx_metadata(path: Path) -> dict:
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


class OnnxNet:
    """An onnxruntime session behind the network interface: normalised float N x C x H x W in, logits out."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # quantised graphs log harmless warnings about unused initialisers
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logits,) = self.session.run(None, {self.input: array})
        return torch.from_numpy(logits).to(x.device)

    def eval(self) -> OnnxNet:
        return self


@RUNTIMES.register("onnx")
def _load_onnx(directory: Path, manifest: dict, device: torch.device) -> OnnxNet:
    # onnxruntime here has the CPU provider only: inputs on another device are copied over and back.
    return OnnxNet(directory / manifest.get("onnx_file", ONNX_FILE))


# ------------------------------------------------------------------------------------------ parity
@torch.no_grad()
def parity(reference, candidate, inputs: torch.Tensor, batch_size: int = 250) -> dict:
    """Compare two networks' logits on the same inputs: max abs difference and top-1 agreement."""
    max_diff, agree = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size]
        a, b = reference(x).float(), candidate(x).float()
        max_diff = max(max_diff, float((a - b).abs().max()))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(inputs), "max_abs_diff": max_diff, "top1_agreement": agree / max(len(inputs), 1)}


def parity_inputs(model: Model, data: str | None, limit: int) -> torch.Tensor:
    """Normalised fp32 test images of the model's recorded split (or of `data`), the first `limit` (0: all)."""
    from .evaluate import select_images

    source = data or model.manifest["split"]["source"]
    if data is None and not (source == "digits" or Path(source).exists()):
        raise UserError(f"the model's training data {source} is gone; give --data SRC for the parity check")
    images, _ = select_images(model, source, "test")
    images = images[:limit] if limit else images
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    return (x - model.mean.cpu()) * model.inv_std.cpu()


def eager_fp32(model_dir: str | Path) -> tuple[Model, torch.nn.Module]:
    """The model directory loaded on the CPU and its network as a plain eager fp32 module (contiguous layout)."""
    model = load(model_dir, device="cpu", precision="fp32")
    require(isinstance(model.net, torch.nn.Module) and model.manifest.get("format") == "safetensors",
            f"{model_dir}: its format is {model.manifest.get('format')!r}; this needs a PyTorch (safetensors) model")
    net = model.net
    net = getattr(net, "_orig_mod", net)  # a runtime recorded as inductor comes back compiled
    return model, net.to(memory_format=torch.contiguous_format).eval()


def _check(result: dict, config: ExportConfig, what: str) -> None:
    if result["max_abs_diff"] > config.atol or result["top1_agreement"] < config.min_agreement:
        raise UserError(f"{what} disagrees with PyTorch on {result['images']} test images: max abs logit difference "
                        f"{result['max_abs_diff']:.3g} (allowed {config.atol:g}), top-1 agreement "
                        f"{result['top1_agreement']:.4f} (needed {config.min_agreement}); nothing written")


# ------------------------------------------------------------------------------------------ commands
def _default_out(config: ExportConfig) -> Path:
    return Path(config.model_dir) / "export" / f"model.{config.format}"


def export_model(config: ExportConfig) -> dict:
    """Export, check parity on real test images, and return a summary (path, size, parity figures)."""
    config.validate()
    from .artifact import read_manifest

    manifest = read_manifest(config.model_dir)
    out = Path(config.out) if config.out else _default_out(config)
    require(out.suffix == f".{config.format}", f"--out {out}: a {config.format} export must end in .{config.format}")
    require(not out.is_dir(), f"--out {out} is a directory; give a file name ending in .{config.format}")
    if manifest.get("format") == "onnx":
        return _export_onnx_dir(config, manifest, out)
    model, net = eager_fp32(config.model_dir)
    inputs = parity_inputs(model, config.data, config.parity_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")  # torch.export wants the .pt2 suffix
    try:
        if config.format == "onnx":
            example = inputs[:2] if config.dynamic_batch else inputs[:1]
            to_onnx(net, example, tmp, export_metadata(manifest), config.dynamic_batch, config.opset)
            result = parity(net, OnnxNet(tmp), inputs, batch_size=250 if config.dynamic_batch else 1)
            _check(result, config, "the ONNX export (onnxruntime)")
        else:
            result = _export_pt2(net, inputs, tmp, manifest, config)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"schema_version": 1, "model_dir": str(config.model_dir), "format": config.format, "path": str(out),
            "size_bytes": out.stat().st_size, "dynamic_batch": config.dynamic_batch, "parity": result}


def _export_pt2(net: torch.nn.Module, inputs: torch.Tensor, tmp: Path, manifest: dict, config: ExportConfig) -> dict:
    example = inputs[:2] if config.dynamic_batch else inputs[:1]
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if config.dynamic_batch else None
    program = torch.export.export(net, (example,), dynamic_shapes=shapes)
    torch.export.save(program, str(tmp), extra_files={"gpuvision.json": json.dumps(export_metadata(manifest))})
    # torch.export.load may unpickle parts of an archive, so gpuvision loads only the .pt2 it has just written
    # itself (here, for the check); model directories never use .pt2 as a runtime format.
    reloaded = torch.export.load(str(tmp)).module()
    result = parity(net, reloaded, inputs, batch_size=250 if config.dynamic_batch else 1)
    _check(result, config, "the re-loaded torch.export program")
    return result


def _export_onnx_dir(config: ExportConfig, manifest: dict, out: Path) -> dict:
    """A model directory that is already ONNX (an int8 variant): copy its verified file; its metadata is inside."""
    require(config.format == "onnx", f"{config.model_dir} holds an ONNX model (format {manifest['format']}); "
            "it can only be exported as onnx")
    source = Path(config.model_dir) / manifest.get("onnx_file", ONNX_FILE)
    meta = read_onnx_metadata(source)
    require(all(k in meta for k in META_KEYS), f"{source}: its ONNX metadata lacks {META_KEYS}; re-run compress")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: shutil.copyfile(source, p))
    return {"schema_version": 1, "model_dir": str(config.model_dir), "format": "onnx", "path": str(out),
            "size_bytes": out.stat().st_size, "dynamic_batch": True,
            "parity": {"images": 0, "note": "copied unchanged from the verified model directory"}}
