"""Compression and export on a CIFAR-10-JPEG model: `compress --method all`, torchao PT2E int8 beside the saved
onnxruntime int8, and ONNX parity on the full test set. Prints the tables; writes JSON under benchmarks/results/.

    python benchmarks/compress.py                          # parent: fastnet, 2 epochs of the fast recipe
    python benchmarks/compress.py --parent runs/cifar      # an existing model directory instead

A full default-recipe parent takes ~50 min on a 2-core AVX2 CPU, so by default the parent is trained for
--parent-epochs epochs (a short schedule: lower accuracy than the recipe's 94%, said in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DEFAULT_DATA, REPO, header, log, markdown_table, result_path, write_result  # noqa: E402


def parent_model(args) -> Path:
    import gpuvision

    if args.parent:
        return Path(args.parent)
    out = REPO / "benchmarks" / "results" / f"compress-parent-{args.parent_epochs:g}ep"
    if (out / "manifest.json").exists():
        log(f"reusing parent {out}")
        return out
    log(f"training the parent: {args.parent_epochs} epochs on {args.data} -> {out}")
    started = time.perf_counter()
    gpuvision.train(data=str(args.data), epochs=args.parent_epochs, out=str(out), overwrite=True, device="cpu",
                    eval_every=0, checkpoint_every=0, seed=0)
    log(f"parent trained in {time.perf_counter() - started:.0f} s")
    return out


def pt2e_row(parent: Path, data: str, repeats: int) -> dict:
    """torchao PT2E int8 (X86InductorQuantizer), compiled with freezing: measured, not saved (see quantize.py)."""
    import torch._inductor.config as inductor_config

    from gpuvision.artifact import ModelDir
    from gpuvision.compress import Context, _load_data
    from gpuvision.compress.quantize import pt2e_int8
    from gpuvision.config import CompressConfig
    from gpuvision.runtime import build_network
    from gpuvision.runtime.timing import speed

    model_dir = ModelDir.open(parent)
    net = build_network(model_dir)
    config = CompressConfig(model_dir=str(parent), data=data)
    images, split = _load_data(config, model_dir)
    ctx = Context(config, model_dir, images, split)
    started = time.perf_counter()
    quantized = pt2e_int8(net, ctx.inputs(ctx.calibration_images(), model_dir.manifest))
    compiled = torch.compile(quantized)

    @torch.no_grad()
    def run(x):
        with inductor_config.patch(freezing=True):  # the quantised graph's weight packing needs freezing
            return compiled(x.contiguous())

    inputs = ctx.inputs(ctx.test_images, model_dir.manifest)
    figures = speed(run, inputs, repeats, torch.device("cpu"))
    predicted = torch.cat([run(inputs[i : i + 64]).argmax(1) for i in range(0, len(inputs), 64)]).numpy()
    return {"name": "int8-pt2e (not saved)", "runtime": "inductor-int8", **figures,
            "accuracy": float((predicted == ctx.test_labels).mean()), "seconds_to_make": time.perf_counter() - started}


def int8_agreement(parent: Path, int8_dir: Path, data: str) -> dict:
    """Top-1 agreement and accuracy of the int8 ONNX model against the fp32 model on the full test set."""
    import gpuvision
    from gpuvision.artifact import ModelDir
    from gpuvision.evaluate import select_images
    from gpuvision.export import parity

    fp32, int8 = gpuvision.load(parent, device="cpu"), gpuvision.load(int8_dir, device="cpu")
    pixels, labels = select_images(ModelDir.open(parent), data, "test")
    pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    result = parity(lambda x: fp32.logits(x, tta=False), lambda x: int8.logits(x, tta=False), pixels)
    predicted = fp32.logits(pixels, tta=False).argmax(1).numpy()
    return {**result, "fp32_accuracy": float((predicted == labels).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--parent", help="an existing model directory (default: train one)")
    parser.add_argument("--parent-epochs", type=float, default=2.0)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--distill-epochs", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    from gpuvision.compress import compress
    from gpuvision.compress.report import markdown
    from gpuvision.config import CompressConfig, ExportConfig
    from gpuvision.export import export_model
    from gpuvision.progress import StageProgress

    result = header("compress", "cpu", argv)
    path = result_path(result)
    parent = parent_model(args)
    result["parent"] = str(parent)
    out = REPO / "benchmarks" / "results" / f"compress-{path.stem.split('-', 2)[-1]}"
    started = time.perf_counter()
    report = compress(CompressConfig(model_dir=str(parent), data=args.data, method="all", out=str(out),
                                     finetune_epochs=args.finetune_epochs, distill_epochs=args.distill_epochs,
                                     latency_repeats=args.repeats),
                      on_event=StageProgress())
    result["compress_seconds"] = time.perf_counter() - started
    result["report"] = report
    write_result(result, path)
    log("PT2E int8 for comparison")
    result["pt2e_int8"] = pt2e_row(parent, args.data, args.repeats)
    write_result(result, path)
    log("ONNX parity on the full test set")
    result["onnx_fp32_parity"] = export_model(ExportConfig(model_dir=str(parent), format="onnx",
                                                           out=str(out.parent / f"{out.name}-export" / "model.onnx"),
                                                           parity_images=0))
    result["int8_vs_fp32"] = int8_agreement(parent, out / "int8", args.data)
    write_result(result, path)

    print(markdown(report))
    p = result["pt2e_int8"]
    print(markdown_table(["variant", "runtime", "accuracy", "latency b1 ms (p90)", "images/s b64"],
                         [[p["name"], p["runtime"], f"{p['accuracy']:.4f}",
                           f"{p['latency_ms_b1']:.2f} ({p['latency_ms_b1_p90']:.2f})",
                           f"{p['images_per_s_b64']:,.0f}"]]))
    print(f"\nONNX fp32 parity: {result['onnx_fp32_parity']['parity']}")
    print(f"int8 vs fp32 on the full test set: {result['int8_vs_fp32']}")
    print(f"\nresult: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
