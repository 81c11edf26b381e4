"""Export a model directory to ONNX or a torch.export program (.pt2), checked against PyTorch on real test images.

    gpuvision export runs/cifar --format onnx          # -> runs/cifar-export/model.onnx
    gpuvision.export.export_model(ExportConfig("runs/cifar", format="pt2"))

ONNX goes through the dynamo-based exporter with a dynamic batch dimension and is run in onnxruntime: its input
`input` is the normalised FP32 N x C x H x W batch the model takes (int8 variants keep it), or with
`--uint8-input` UINT8 N x H x W x C pixels with the normalisation inside the graph. The .pt2 is saved, re-loaded
and run. Either way the logits on test images are compared with the eager PyTorch model, and the export fails
(nothing is written) if they differ by more than the tolerance or are not finite. The files carry the class names
and the input normalisation (ONNX metadata, a gpuvision.json entry in the .pt2), so a consumer needs nothing else.
Exports are made and checked in memory; the export of an encrypted model is written encrypted with its data key
(OUT.enc, AES-256-GCM; `gpuvision decrypt OUT.enc` restores OUT) unless --plaintext is given.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .artifact import ModelDir, check_outside_models
from .config import Access, ExportConfig
from .crypto import aead
from .data.input_spec import normalise
from .errors import BadInput, Unsupported, UserError, require
from .evaluate import recorded_data, select_images
from .files import atomic_write
from .registry import Registry
from .runtime import OnnxRuntime, build_network
from .runtime.calibration import temperature
from .runtime.onnx import export_metadata, onnx_model, serialize

Logits = Callable[[torch.Tensor], torch.Tensor]  # uint8 N x C x H x W pixels -> logits
FORMATS: Registry[Callable] = Registry("export format")


# ------------------------------------------------------------------------------------------ parity
@torch.no_grad()
def parity(reference: Logits, candidate: Logits, pixels: torch.Tensor, batch_size: int = 250) -> dict:
    """Compare two models' logits on the same uint8 pixels: max abs difference and top-1 agreement. A logit that
    is not finite on either side is a mismatch (infinite difference), never a match."""
    max_diff, agree = 0.0, 0
    for start in range(0, len(pixels), batch_size):
        x = pixels[start : start + batch_size]
        a, b = reference(x).float(), candidate(x).float()
        diff = (a - b).abs()
        max_diff = max(max_diff, float(diff.max()) if bool(torch.isfinite(diff).all()) else float("inf"))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(pixels), "max_abs_diff": max_diff, "top1_agreement": agree / max(len(pixels), 1)}


def parity_pixels(model_dir: ModelDir, data: str | None, limit: int) -> torch.Tensor:
    """uint8 test images of the model's recorded split (or of `data`), the first `limit` (0: all)."""
    images, _ = select_images(model_dir, recorded_data(model_dir, data), "test")
    return torch.from_numpy(np.ascontiguousarray(images[:limit] if limit else images))


def _check(result: dict, config: ExportConfig, what: str) -> None:
    if not (result["max_abs_diff"] <= config.atol and result["top1_agreement"] >= config.min_agreement):
        raise UserError(f"{what} disagrees with PyTorch on {result['images']} test images: max abs logit difference "
                        f"{result['max_abs_diff']:.3g} (allowed {config.atol:g}), top-1 agreement "
                        f"{result['top1_agreement']:.4f} (needed {config.min_agreement}); nothing written")


# ------------------------------------------------------------------------------------------ formats
@FORMATS.register("onnx")
def _export_onnx(model_dir: ModelDir, net: torch.nn.Module, pixels: torch.Tensor, config: ExportConfig
                 ) -> tuple[dict, bytes]:
    m = model_dir.manifest
    spec = m.input
    meta = export_metadata(spec, m.classes, m.tta_level, m.architecture["name"], config.uint8_input,
                           temperature(m.calibration, False))
    example = normalise(pixels[:2], spec)
    proto = onnx_model(net, example if config.dynamic_batch else example[:1], meta, config.dynamic_batch,
                       config.opset, spec if config.uint8_input else None)
    blob = serialize(proto)
    session = OnnxRuntime(blob, spec, m.classes, 0, torch.device("cpu"), "fp32")
    if config.uint8_input:
        def candidate(x):
            return torch.from_numpy(session.session.run(None, {session.input: x.permute(0, 2, 3, 1).numpy()})[0])
    else:
        def candidate(x):
            return session.forward(normalise(x, spec))
    result = parity(lambda x: net(normalise(x, spec)), candidate, pixels, 250 if config.dynamic_batch else 1)
    _check(result, config, "the ONNX export (onnxruntime)")
    return result, blob


@FORMATS.register("pt2")
def _export_pt2(model_dir: ModelDir, net: torch.nn.Module, pixels: torch.Tensor, config: ExportConfig
                ) -> tuple[dict, bytes]:
    require(not config.uint8_input, "--uint8-input applies to ONNX exports only", BadInput)
    m = model_dir.manifest
    spec = m.input
    example = normalise(pixels[:2] if config.dynamic_batch else pixels[:1], spec)
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if config.dynamic_batch else None
    program = torch.export.export(net, (example,), dynamic_shapes=shapes)
    meta = export_metadata(spec, m.classes, m.tta_level, m.architecture["name"],
                           temperature=temperature(m.calibration, False))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"gpuvision.json": json.dumps(meta)})
    # torch.export.load may unpickle parts of an archive, so gpuvision loads only the .pt2 it has just made itself,
    # from memory (here, for the check); model directories never use .pt2 as a runtime format.
    reloaded = torch.export.load(io.BytesIO(buffer.getvalue())).module()
    result = parity(lambda x: net(normalise(x, spec)), lambda x: reloaded(normalise(x, spec)), pixels,
                    250 if config.dynamic_batch else 1)
    _check(result, config, "the re-loaded torch.export program")
    return result, buffer.getvalue()


# ------------------------------------------------------------------------------------------ command
def export_path(config: ExportConfig) -> Path:
    """--out, else MODEL_DIR-export/model.FORMAT; never inside a model directory."""
    model_dir = Path(config.model_dir)
    out = Path(config.out) if config.out else model_dir.parent / f"{model_dir.name}-export" / f"model.{config.format}"
    require(out.suffix == f".{config.format}", f"--out {out}: a {config.format} export must end in .{config.format}",
            BadInput)
    require(not out.is_dir(), f"--out {out} is a directory; give a file name ending in .{config.format}", BadInput)
    check_outside_models(out)
    return out


def export_model(config: ExportConfig, access: Access | None = None) -> dict:
    """Export, check parity on real test images, and return a summary (path, size, parity figures). `access`: the
    signature and data key options (see `ModelDir.open`)."""
    config.validate()
    FORMATS.get(config.format)
    model_dir = ModelDir.open(config.model_dir, access)
    out = export_path(config)
    model_dir.verify()  # every file, before anything is made: a damaged model is refused with nothing written
    if model_dir.manifest.format == "onnx":
        result, blob = _copy_onnx(model_dir, config)
    else:
        net = build_network(model_dir)
        pixels = parity_pixels(model_dir, config.data, config.parity_images)
        result, blob = FORMATS.get(config.format)(model_dir, net, pixels, config)
    sealed = model_dir.encrypted and not config.plaintext
    if sealed:
        out, blob = out.with_name(out.name + ".enc"), aead.seal(model_dir.data_key, blob, aead.EXPORTED)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda p: Path(p).write_bytes(blob))
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from e
    return {"schema_version": 1, "model_dir": str(config.model_dir), "format": config.format, "path": str(out),
            "size_bytes": len(blob), "encrypted": sealed,
            "dynamic_batch": config.dynamic_batch or model_dir.manifest.format == "onnx",
            "uint8_input": config.uint8_input, "parity": result}


def _copy_onnx(model_dir: ModelDir, config: ExportConfig) -> tuple[dict, bytes]:
    """A model directory that is already ONNX (an int8 variant): its verified bytes; its metadata is inside."""
    m = model_dir.manifest
    require(config.format == "onnx", f"{config.model_dir} holds an ONNX model ({m.inference.name}); it can only be "
            "exported as onnx", Unsupported)
    require(not config.uint8_input, f"{config.model_dir} is already ONNX; --uint8-input needs a PyTorch model",
            Unsupported)
    return {"images": 0, "note": "copied unchanged from the verified model directory"}, model_dir.read(m.weights)
