"""The command line: parse arguments, call the Python API, print. No logic of its own.

Errors a user can fix (UserError) print one line on stderr and exit with code 2; progress goes to stderr and
`--json` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

from .errors import UserError

TRAIN_FLAGS = {  # flag -> (type, help); defaults come from TrainConfig
    "data": (str, "digits, an image folder, a .tar/.tar.gz/.tgz/.zip of one, cifar-10-python.tar.gz, an IDX folder"),
    "model": (str, "fastnet, resnet18, resnet34, resnet50, or auto"),
    "recipe": (str, "fast, standard, or auto"),
    "epochs": (float, "training epochs; fractions allowed (9.9)"),
    "batch-size": (int, "images per step"),
    "lr": (float, "learning rate, in the recipe's units"),
    "image-size": (int, "resize images to S x S (default: the most common size)"),
    "device": (str, "auto, cpu, cuda, cuda:N or mps"),
    "precision": (str, "auto, fp32, bf16 or fp16"),
    "compile": (str, "torch.compile: auto, on or off"),
    "loader": (str, "device (data set on the device), stream (from pinned host memory), or auto"),
    "seed": (int, "seed of every random choice"),
    "val-fraction": (float, "fraction of the training images held out for validation"),
    "test-fraction": (float, "fraction held out for testing, when the data has no test part"),
    "eval-every": (int, "epochs between validation passes (0: only at the end)"),
    "checkpoint-every": (int, "epochs between checkpoints (0: none)"),
    "pretrained": (str, "a local .safetensors file of initial weights"),
    "config": (str, "a YAML or JSON file of these settings (flags override it)"),
    "out": (str, "run directory (default runs/<data name>-<timestamp>)"),
}
TRAIN_SWITCHES = {"overwrite": "replace a non-empty --out", "resume": "continue the run in --out from its checkpoint",
                  "strict": "refuse unreadable images instead of skipping them"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuvision", description="Train, evaluate and use image classifiers, fast.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpuvision {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model on a data source")
    for flag, (kind, text) in TRAIN_FLAGS.items():
        train.add_argument(f"--{flag}", type=kind, default=argparse.SUPPRESS, help=text)
    for flag, text in TRAIN_SWITCHES.items():
        train.add_argument(f"--{flag}", action="store_true", default=argparse.SUPPRESS, help=text)
    train.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    evaluate = commands.add_parser("evaluate", help="evaluate a model directory")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--data", help="source to evaluate on (default: the one recorded in the manifest)")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "all"])
    evaluate.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                          help="test-time augmentation (default: the recipe's choice)")
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("model_dir")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=1)
    predict.add_argument("--json", action="store_true")

    demo = commands.add_parser("demo", help="the main job on the embedded digits: train, evaluate, predict")
    demo.add_argument("--out", default="runs/digits-demo", help="run directory (replaced if it exists)")
    demo.add_argument("--json", action="store_true")

    compress = commands.add_parser("compress", help="prune, quantise or distil a model; write a comparison report")
    compress.add_argument("model_dir")
    compress.add_argument("--data", required=True,
                          help="the model's training data: calibration, fine-tuning, test split")
    compress.add_argument("--method", default="all", help="prune, int8, distill or all (each, plus prune+int8 and "
                          "distill+int8)")
    compress.add_argument("--target-sparsity", type=float, default=0.5, help="fraction of parameters pruning removes")
    compress.add_argument("--student", help="registered model name of the distilled student (default: the "
                          "teacher's architecture at half width)")
    compress.add_argument("--finetune-epochs", type=float, default=2.0, help="fine-tuning epochs after pruning")
    compress.add_argument("--distill-epochs", type=float, help="student training epochs (default: the parent's)")
    compress.add_argument("--out", help="output directory (default MODEL_DIR-compressed)")
    compress.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    compress.add_argument("--no-compile", dest="compile", action="store_false",
                          help="skip torch.compile runtimes (saves minutes of compiling)")
    compress.add_argument("--device", default="cpu", help="where fine-tuning and distillation train")
    compress.add_argument("--latency-repeats", type=int, default=30, help="timed runs per speed figure")
    compress.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="export a model to ONNX or a torch.export program, parity-checked")
    export.add_argument("model_dir")
    export.add_argument("--format", required=True, choices=["onnx", "pt2"])
    export.add_argument("--out", help="output file (default MODEL_DIR/export/model.FORMAT)")
    export.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    export.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                        help="a dynamic batch dimension (default on)")
    export.add_argument("--data", help="images for the parity check (default: the model's recorded test split)")
    export.add_argument("--parity-images", type=int, default=1000, help="test images compared (0: all)")
    export.add_argument("--json", action="store_true")

    data = commands.add_parser("data", help="look at a data source")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    inspect = data_commands.add_parser("inspect", help="classes, counts, sizes, unreadable files, split sizes")
    inspect.add_argument("src")
    inspect.add_argument("--json", action="store_true")
    return parser


def train_config(args: argparse.Namespace):
    """TrainConfig from defaults, then --config FILE, then flags."""
    from .config import TrainConfig, read_config_file

    given = {k: v for k, v in vars(args).items() if k not in ("command", "json")}
    settings = read_config_file(given.pop("config")) if "config" in given else {}
    settings.update(given)
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in settings.items() if k in known})


def _emit(obj: dict, as_json: bool, human: str) -> None:
    print(json.dumps(obj, indent=None if as_json else 2) if as_json else human)


def run_train(args) -> int:
    from .progress import TrainProgress
    from .train.trainer import train

    config = train_config(args)
    with TrainProgress() as progress:
        result = train(config, on_event=progress)
    m = result.manifest
    summary = {"schema_version": 1, "model_dir": str(result.model_dir), "seconds": round(result.seconds, 2),
               "device": m["device"], "precision": m["precision"], "model": m["architecture"]["name"],
               "classes": m["classes"], "split": m["split"]["sizes"], "metrics": m["metrics"]}
    val = m["metrics"].get("val_accuracy")
    human = (f"model saved to {result.model_dir} ({m['architecture']['name']}, {m['device']}, {m['precision']}, "
             f"{result.seconds:.1f} s" + (f", val accuracy {val:.4f})" if val is not None else ")"))
    _emit(summary, args.json, human)
    return 0


def run_evaluate(args) -> int:
    from .config import EvaluateConfig
    from .evaluate import evaluate

    report = evaluate(EvaluateConfig(model_dir=args.model_dir, data=args.data, split=args.split, tta=args.tta))
    if args.json:
        _emit({k: v for k, v in report.items() if k != "confusion_matrix"}, True, "")
        return 0
    lines = [f"{args.split} accuracy {report['accuracy']:.4f} on {report['n']} images (tta: {report['tta']})",
             f"{'class':>16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name, c in report["per_class"].items():
        lines.append(f"{name:>16} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} {c['support']:8d}")
    lines.append(f"report: {report['report']}\nconfusion matrix: {report['confusion_png']}")
    print("\n".join(lines))
    return 0


def run_predict(args) -> int:
    from .artifact import load

    model = load(args.model_dir)
    results = model.predict(args.images, top_k=args.top_k)
    predictions = [{"image": image, "top": top} for image, top in zip(args.images, results)]
    human = "\n".join(f"{p['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in p["top"])
                      for p in predictions)
    _emit({"schema_version": 1, "model_dir": args.model_dir, "predictions": predictions}, args.json, human)
    return 0


def run_data(args) -> int:
    from .data.inspect import inspect_source

    info = inspect_source(args.src)
    counts = ", ".join(f"{c}: {n}" for c, n in info["class_counts"].items())
    human = (f"{info['name']}: {info['images']} images, {len(info['classes'])} classes ({counts})\n"
             f"image shape (C, H, W): {info['image_shape']}; native sizes: {info['native_sizes']}\n"
             f"unreadable: {len(info['skipped'])} {info['skipped'][:10]}\n"
             f"split sizes: {info['split_sizes']} (given test part: {info['given_test_split']})")
    _emit(info, args.json, human)
    return 0


def run_demo(args) -> int:
    from .demo import demo
    from .progress import TrainProgress

    with TrainProgress() as progress:
        result = demo(args.out, on_event=progress)
    human = "\n".join([
        f"model directory:  {result['model_dir']} (trained in {result['train_seconds']} s)",
        f"test accuracy:    {result['test_accuracy']:.4f}",
        f"report:           {result['report']}",
        f"confusion matrix: {result['confusion_png']}",
        *(f"predicted {p['predicted']} ({p['probability']:.2f}) for {p['image']}" for p in result["predictions"]),
    ])
    _emit(result, args.json, human)
    return 0


def run_compress(args) -> int:
    from rich.console import Console

    from .compress import compress
    from .config import CompressConfig

    console = Console(stderr=True)

    def progress(event: str, **info) -> None:
        if event == "stage":
            console.print(info["text"])
        elif event == "train" and info["train_event"] == "epoch_end":
            console.print(f"  {info['stage']}: epoch {info['epoch']} loss {info['train_loss']:.4f} "
                          f"({info['seconds']:.1f} s)")

    config = CompressConfig(model_dir=args.model_dir, data=args.data, method=args.method,
                            target_sparsity=args.target_sparsity, student=args.student,
                            finetune_epochs=args.finetune_epochs, distill_epochs=args.distill_epochs, out=args.out,
                            overwrite=args.overwrite, compile=args.compile, device=args.device,
                            latency_repeats=args.latency_repeats)
    report = compress(config, on_event=progress)
    if args.json:
        _emit(report, True, "")
    else:
        from .compress.report import markdown

        print(markdown(report) + f"\nreport: {report['out']}/report.json, report.md, report.png")
    return 0


def run_export(args) -> int:
    from .config import ExportConfig
    from .export import export_model

    result = export_model(ExportConfig(model_dir=args.model_dir, format=args.format, out=args.out, opset=args.opset,
                                       dynamic_batch=args.dynamic_batch, data=args.data,
                                       parity_images=args.parity_images))
    p = result["parity"]
    human = (f"exported {result['path']} ({result['size_bytes']:,} bytes); parity on {p['images']} test images: "
             f"max abs diff {p.get('max_abs_diff', 0):.2e}, top-1 agreement {p.get('top1_agreement', 1):.4f}")
    _emit(result, args.json, human)
    return 0


COMMANDS = {"demo": run_demo, "train": run_train, "evaluate": run_evaluate, "predict": run_predict, "data": run_data,
            "compress": run_compress, "export": run_export}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
