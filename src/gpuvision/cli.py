"""The command line: parse arguments, call the Python API, print. No logic of its own.

Flags, defaults and choices come from the config dataclasses (config.py) and the registries, so nothing is
restated here; every command that reads a model directory takes the same access options (`config.Access`:
--pubkey, --data-key) and opens it with `ModelDir.open(path, access)`. Errors a user can fix (UserError) print one
line on stderr and exit with code 2; progress goes to stderr and `--json` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import MISSING, fields

from .errors import BadInput, UserError

# The registries' names, written out so that parsing arguments and --help import no torch (seconds at start-up);
# tests/unit/test_cli_flags.py keeps them equal to the registries.
REGISTRY_NAMES = {"models": ("fastnet", "resnet18", "resnet34", "resnet50"),
                  "recipes": ("distill", "fast", "standard"),
                  "methods": ("prune", "int8", "distill", "all"),
                  "formats": ("onnx", "pt2"),
                  "attacks": ("apgd", "fgsm", "pgd")}


def _registry_choices(name: str) -> list[str]:
    if name not in REGISTRY_NAMES:
        raise ValueError(f"no registry {name!r}")
    return list(REGISTRY_NAMES[name])


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        raise BadInput(f"{self.prog}: {message}")


def add_config_flags(parser: argparse.ArgumentParser, config_type) -> None:
    """One flag per setting of a config dataclass, with its help, default and choices; flags the user did not give
    stay absent (SUPPRESS), so the dataclass defaults (and --config files) apply."""
    from .config import field_types

    for f in fields(config_type):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        default = f.default if f.default is not MISSING else None
        kinds = [t for t in field_types(config_type, f.name) if t is not type(None)]
        choices = meta.get("choices")
        if isinstance(choices, str):
            choices = (["auto"] if default == "auto" else []) + _registry_choices(choices)
        shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
        text = meta.get("help", "")
        if "(default: " not in text:  # a help that explains its automatic default says it itself
            text += f" (default: {shown})"
        flag = f"--{f.name.replace('_', '-')}"
        if kinds == [bool]:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=kinds[0], choices=choices, default=argparse.SUPPRESS, help=text,
                                metavar=f.name.upper() if choices is None else None)


def config_from_args(config_type, args: argparse.Namespace, base: dict | None = None, **positional):
    """The config: dataclass defaults, then `base` (a --config file), then the flags given, then positionals."""
    names = {f.name for f in fields(config_type)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return config_type(**{**(base or {}), **given, **positional}).validate()


def add_access_flags(parser: argparse.ArgumentParser) -> None:
    """The access options (--pubkey, --data-key) of every command that reads a model directory, as one group."""
    from .config import Access

    add_config_flags(parser.add_argument_group("model access", "signed and encrypted model directories"), Access)


def access_from_args(args: argparse.Namespace):
    """The config.Access of a command's flags, for `ModelDir.open(path, access)`."""
    from .config import Access

    return config_from_args(Access, args)


def build_parser() -> argparse.ArgumentParser:
    from .config import (
        AttackConfig,
        BenchConfig,
        CompressConfig,
        CryptConfig,
        DoctorConfig,
        EvaluateConfig,
        ExportConfig,
        KeysConfig,
        MonitorConfig,
        PredictConfig,
        ServeConfig,
        SignConfig,
        TrainConfig,
    )
    from .version import __version__

    parser = _Parser(prog="gpuvision", description="Train, evaluate and use image classifiers, fast.")
    parser.add_argument("--version", action="version", version=f"gpuvision {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str, config_type=None, model_dir: bool = False, access: bool | None = None
                ) -> argparse.ArgumentParser:
        """A subcommand; one that takes a model directory also takes the access options unless access=False."""
        sub = commands.add_parser(name, help=help, description=help)
        if model_dir:
            sub.add_argument("model_dir", help="model directory")
        if config_type:
            add_config_flags(sub, config_type)
        if model_dir if access is None else access:
            add_access_flags(sub)
        sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sub

    train = command("train", "train a model on a data source", TrainConfig, access=True)  # a distillation teacher
    train.add_argument("--config", default=argparse.SUPPRESS, help="a YAML or JSON file of these settings (flags "
                       "override it); also model_args and recipe_args")
    command("evaluate", "evaluate a model directory on its test split (or any labelled source)", EvaluateConfig, True)
    command("attack", "attack a model (FGSM, PGD, APGD-CE): clean and robust accuracy, per class, and a picture",
            AttackConfig, True)
    predict = command("predict", "classify image files, folders or glob patterns", PredictConfig, True)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (every image in them, "
                         "recursively) or quoted glob patterns such as 'photos/**/*.jpg'")
    demo = command("demo", "the main job on the embedded digits: train, evaluate, predict")
    demo.add_argument("--out", default="runs/digits-demo", help="demo directory (default: runs/digits-demo)")
    command("compress", "prune, quantise or distil a model; write a comparison report", CompressConfig, True)
    command("export", "export a model to ONNX or a torch.export program, parity-checked", ExportConfig, True)
    serve = command("serve", "serve models over HTTP: KServe v2 (Triton clients), an upload API, metrics",
                    ServeConfig)
    serve.add_argument("models", nargs="*", metavar="MODEL", help="a model directory: DIR or NAME=DIR")
    add_access_flags(serve)
    monitor = command("monitor", "a running server's models: production against test (live accuracy, drift, "
                      "latency)", MonitorConfig)
    monitor.add_argument("url", metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    data = commands.add_parser("data", help="look at a data source")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    inspect = data_commands.add_parser("inspect", help="classes, counts, sizes, unreadable files, split sizes")
    inspect.add_argument("src")
    inspect.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    keys = commands.add_parser("keys", help="make keys for signing and encrypting models")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    generate = keys_commands.add_parser("generate", help="a P-256 signing key pair and a 256-bit data key, "
                                        "owner-only files")
    add_config_flags(generate, KeysConfig)
    generate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    command("sign", "add model.sig, an OpenSSF model signature of every file", SignConfig, True, access=False)
    command("verify", "check that a model is intact and signed by --pubkey (exit 2 if not)", None, True)
    command("encrypt", "write an AES-256-GCM encrypted copy of a model (sign it afterwards)", CryptConfig, True)
    command("decrypt", "write the decrypted copy of an encrypted model (or exported .enc file)", CryptConfig, True)
    command("doctor", "versions, devices, what works and how fast, and what auto picks here", DoctorConfig)
    command("bench", "measure what each speed method buys here: data, training step, inference; CPU against GPU",
            BenchConfig)
    return parser


def _emit(obj: dict, as_json: bool, human: str) -> None:
    print(json.dumps(obj) if as_json else human)


def run_train(args) -> int:
    from .config import TrainConfig, read_config_file

    base = read_config_file(args.config) if "config" in vars(args) else None
    config = config_from_args(TrainConfig, args, base)
    _starting(args, data=config.data)
    from .progress import TrainProgress
    from .train import distributed
    from .train.trainer import train

    if config.nproc > 1 and not distributed.under_launcher():  # the workers train, and rank 0 prints the summary
        distributed.launch(["train", *args.argv], config.nproc, config.max_restarts)
        return 0
    with TrainProgress() as progress:
        result = train(config, on_event=progress, access=access_from_args(args))
    if not distributed.world_from_env().main:
        return 0
    m = result.manifest
    summary = {"schema_version": 1, "model_dir": str(result.model_dir), "seconds": round(result.seconds, 2),
               "device": m.training.device, "precision": m.training.precision, "model": m.architecture["name"],
               "classes": m.classes, "split": m.split.sizes, "val_source": m.split.val_source,
               "test_source": m.split.test_source, "metrics": m.metrics,
               "reference_accuracy": m.reference.accuracy if m.reference else None, "adversarial": m.adversarial}
    val = m.metrics.get("val_accuracy")
    human = (f"model saved to {result.model_dir} ({m.architecture['name']}, {m.training.device}, "
             f"{m.training.precision}, {result.seconds:.1f} s" +
             (f", val accuracy {val:.4f})" if val is not None else ")") +
             f"\ntraining curves: {result.model_dir / 'curves.png'}")
    _emit(summary, args.json, human)
    return 0


def run_evaluate(args) -> int:
    from .config import EvaluateConfig

    config, access = config_from_args(EvaluateConfig, args, model_dir=args.model_dir), access_from_args(args)
    _starting(args)
    from .evaluate import evaluate

    report = evaluate(config, access)
    if args.json:
        _emit({k: v for k, v in report.items() if k != "confusion_matrix"}, True, "")
        return 0
    cal = report["calibration"]
    top5 = f", top-5 {report['top5_accuracy']:.4f}" if "top5_accuracy" in report else ""
    lines = [f"{report['split']} accuracy {report['accuracy']:.4f} on {report['n']} images (tta: {report['tta']}, "
             f"runtime {report['runtime']}); balanced accuracy {report['balanced_accuracy']:.4f}, macro-F1 "
             f"{report['macro_f1']:.4f}{top5}",
             f"expected calibration error {cal['ece_before']:.4f} (softmax) -> {cal['ece_after']:.4f} (temperature "
             f"{cal['temperature']:.3g})" if cal["reliability_after"] else
             f"expected calibration error {cal['ece_before']:.4f} (not calibrated: no validation split to fit on)",
             f"{'class':>16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name, c in report["per_class"].items():
        lines.append(f"{name:>16} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} {c['support']:8d}")
    if report["most_confused"]:
        lines.append("most confused: " + ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                                                   for p in report["most_confused"]))
    lines.append(f"report: {report['report']}")
    for key, what in (("confusion_png", "confusion matrix"), ("reliability_png", "reliability diagram"),
                      ("mistakes_png", "worst mistakes")):
        if key in report:
            lines.append(f"{what}: {report[key]}")
    if report["adversarial_training"]:
        lines.append(f"adversarially trained: {_describe_adversarial(report['adversarial_training'])}")
    print("\n".join(lines))
    return 0


def _describe_adversarial(record: dict) -> str:
    return f"{record['method']}, eps {record['eps'] * 255:.4g}/255, {record['steps']} step(s)"


def run_attack(args) -> int:
    from .config import AttackConfig

    config, access = config_from_args(AttackConfig, args, model_dir=args.model_dir), access_from_args(args)
    _starting(args)
    from .evaluate import attack

    report = attack(config, access)
    if args.json:
        _emit(report, True, "")
        return 0
    lines = [f"{report['method']} at eps {report['eps_text']} ({report['steps']} step(s)) on {report['n']} "
             f"{report['split']} images: clean accuracy {report['clean_accuracy']:.4f}, robust accuracy "
             f"{report['robust_accuracy']:.4f} ({report['seconds']} s)",
             f"{'class':>16} {'clean':>9} {'robust':>9} {'support':>8}"]
    for name, c in report["per_class"].items():
        lines.append(f"{name:>16} {c['clean_accuracy']:9.4f} {c['robust_accuracy']:9.4f} {c['support']:8d}")
    if report["adversarial_training"]:
        lines.append(f"adversarially trained: {_describe_adversarial(report['adversarial_training'])}")
    lines.append(f"report: {report['report']}")
    if "png" in report:
        lines.append(f"picture: {report['png']}")
    print("\n".join(lines))
    return 0


def run_predict(args) -> int:
    from .config import PredictConfig

    config, access = config_from_args(PredictConfig, args, model_dir=args.model_dir, images=args.images), \
        access_from_args(args)
    _starting(args)
    from .runtime import load
    from .runtime.predict import check_out, expand, predict_files, write_rows

    check_out(config.out)
    model = load(config.model_dir, device=config.device, access=access)
    found, rows = expand(config.images), []
    for row in predict_files(model, found, config.top_k, config.tta):
        rows.append(row)
        if "error" in row:
            if len(found) > 1:  # a lone image's error is the one line at the end
                print(f"{row['image']}: {row['error']}", file=sys.stderr, flush=True)
        elif not args.json:
            print(f"{row['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"]),
                  flush=True)
    if config.out:
        write_rows(rows, config.out, config.top_k)
    failed = [r for r in rows if "error" in r]
    if args.json:
        _emit({"schema_version": 1, "model_dir": config.model_dir, "out": config.out,
               "predictions": [r for r in rows if "error" not in r], "errors": failed}, True, "")
    elif config.out:
        print(f"{len(rows) - len(failed)} predictions written to {config.out}", file=sys.stderr)
    if failed:  # exit 2 after every readable image was predicted
        first = f"{failed[0]['image']}: {failed[0]['error']}"
        raise BadInput(first if len(rows) == 1 else f"{len(failed)} of {len(rows)} images could not be read (the "
                       f"first: {first})")
    return 0


def run_data(args) -> int:
    _starting(args)
    from .data.inspect import inspect_source

    info = inspect_source(args.src)
    counts = ", ".join(f"{c}: {n}" for c, n in info["class_counts"].items())
    human = (f"{info['name']}: {info['images']} images, {len(info['classes'])} classes ({counts})\n"
             f"image shape (C, H, W): {info['image_shape']}; native sizes: {info['native_sizes']}\n"
             f"unreadable: {len(info['skipped'])} {info['skipped'][:10]}\n"
             f"layout: {info['layout']}; split sizes: {info['split_sizes']} (val: {info['val_source']}, test: "
             f"{info['test_source']})")
    _emit(info, args.json, human)
    return 0


def run_demo(args) -> int:
    _starting(args)
    from .demo import demo
    from .progress import TrainProgress

    with TrainProgress() as progress:
        result = demo(args.out, on_event=progress)
    human = "\n".join([
        f"model directory:  {result['model_dir']} (trained in {result['train_seconds']} s)",
        f"test accuracy:    {result['test_accuracy']:.4f}",
        f"report:           {result['report']}",
        f"confusion matrix: {result['confusion_png']}",
        *(f"predicted {p['predicted']} ({p['probability']:.2f}) for {p['image']}: "
          + ("right" if p["correct"] else f"WRONG, it is a {p['label']}") for p in result["predictions"]),
        f"this run: {result['run_dir']} (also {result['latest']}; an earlier run is replaced once a new one is done)",
    ])
    _emit(result, args.json, human)
    return 0


def run_compress(args) -> int:
    from .config import CompressConfig

    config, access = config_from_args(CompressConfig, args, model_dir=args.model_dir), access_from_args(args)
    _starting(args)
    from .compress import compress
    from .progress import StageProgress

    report = compress(config, on_event=StageProgress(), access=access)
    if args.json:
        _emit(report, True, "")
    else:
        from .compress.report import markdown

        print(markdown(report) + f"\nreport: {report['out']}/report.json, report.md, report.png")
    return 0


def run_export(args) -> int:
    from .config import ExportConfig

    config, access = config_from_args(ExportConfig, args, model_dir=args.model_dir), access_from_args(args)
    _starting(args)
    from .export import export_model

    result = export_model(config, access)
    p = result["parity"]
    human = (f"exported {result['path']} ({result['size_bytes']:,} bytes{', encrypted' if result['encrypted'] else ''}"
             f"); parity on {p['images']} test images: max abs diff {p.get('max_abs_diff', 0):.2e}, top-1 agreement "
             f"{p.get('top1_agreement', 1):.4f}")
    _emit(result, args.json, human)
    return 0


def run_serve(args) -> int:
    from .config import ServeConfig

    def ready(info: dict) -> None:  # flushed: a script waits for this line while the server runs
        print(json.dumps({"schema_version": 1, **info}), flush=True)

    config, access = config_from_args(ServeConfig, args, models=args.models), access_from_args(args)
    _starting(args)
    from .serve import serve

    serve(config, on_ready=ready if args.json else None, access=access)
    return 0


def run_monitor(args) -> int:
    from .config import MonitorConfig
    from .serve.client import monitor_reports, table

    reports = monitor_reports(config_from_args(MonitorConfig, args, url=args.url))
    if args.json:
        _emit({"schema_version": 1, "models": reports}, True, "")
    else:
        print(table(reports))
    return 0


def run_keys(args) -> int:
    from .config import KeysConfig
    from .crypto.keys import generate

    paths = generate(config_from_args(KeysConfig, args).out)
    summary = {"schema_version": 1, "signing_key": str(paths["signing.key"]),
               "public_key": str(paths["signing.pub"]), "data_key": str(paths["data.key"])}
    human = (f"wrote {summary['signing_key']} and {summary['data_key']} (secret: keep them owner-only, and the data "
             f"key backed up) and {summary['public_key']} (share it: `verify --pubkey` checks with it)")
    _emit(summary, args.json, human)
    return 0


def run_sign(args) -> int:
    from .config import SignConfig

    config = config_from_args(SignConfig, args, model_dir=args.model_dir)
    _starting(args)
    from .protect import sign_model

    result = sign_model(config.model_dir, config.signing_key, config.overwrite)
    _emit(result, args.json, f"signed {result['model_dir']}: {result['signature']} covers {result['files']} files")
    return 0


def run_verify(args) -> int:
    access = access_from_args(args)
    _starting(args)
    from .protect import verify_model

    result = verify_model(args.model_dir, access)
    human = (f"verified: {result['model_dir']} is intact and signed by {result['pubkey']} ({result['files']} files, "
             f"version {result['version']})")
    _emit(result, args.json, human)
    return 0


def run_crypt(args) -> int:
    from .config import CryptConfig

    config, access = config_from_args(CryptConfig, args, model_dir=args.model_dir), access_from_args(args)
    _starting(args)
    from .protect import decrypt_model, encrypt_model

    run = encrypt_model if args.command == "encrypt" else decrypt_model
    result = run(config.model_dir, config.out, access)
    _emit(result, args.json, f"{args.command}ed {result['model_dir']} -> {result['out']} ({result['files']} files)")
    return 0


def run_doctor(args) -> int:
    from .config import DoctorConfig
    from .device.doctor import doctor

    report = doctor(config_from_args(DoctorConfig, args).compile_probe)
    _emit(report.to_json(), args.json, report.text())
    return 0


def run_bench(args) -> int:
    from .bench import bench
    from .bench.report import markdown
    from .config import BenchConfig
    from .progress import BenchProgress

    with BenchProgress() as progress:
        report = bench(config_from_args(BenchConfig, args), on_event=progress)
    files = report.files
    human = markdown(report) + f"\nreport: {files['markdown']}, {files['json']}, " + ", ".join(files["charts"])
    _emit(report.to_json(), args.json, human)
    return 0


COMMANDS = {"demo": run_demo, "train": run_train, "evaluate": run_evaluate, "attack": run_attack,
            "predict": run_predict, "data": run_data, "compress": run_compress, "export": run_export,
            "serve": run_serve, "monitor": run_monitor, "keys": run_keys, "sign": run_sign, "verify": run_verify,
            "encrypt": run_crypt, "decrypt": run_crypt, "doctor": run_doctor, "bench": run_bench}


# On a terminal, each command's first line, printed once its settings are checked and before it imports torch and
# reads its input, which takes seconds: no command starts in silence. Not in logs and pipes, where bad input stays
# exactly one line (`error: ...`) for scripts to read.
STARTING = {"train": "training on {data}", "demo": "demo: training on the embedded digits", "evaluate":
            "evaluating {model_dir}", "attack": "attacking {model_dir}", "predict": "predicting with {model_dir}",
            "compress": "compressing {model_dir}",
            "export": "exporting {model_dir}", "serve": "starting the server", "data": "reading {src}",
            "sign": "signing {model_dir}", "verify": "verifying {model_dir}", "encrypt": "encrypting {model_dir}",
            "decrypt": "decrypting {model_dir}"}


def _starting(args: argparse.Namespace, **values) -> None:
    if args.command in STARTING and sys.stderr.isatty():
        print(STARTING[args.command].format_map({**vars(args), **values}) + " ...", file=sys.stderr, flush=True)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread wherever it is, so every cleanup runs (temporary files, a half-written
    --out, the in-memory workspace of decrypted weights) before the process ends."""


def main(argv: list[str] | None = None) -> int:
    # Library code logs; the CLI shows gpuvision's own information lines (progress in logs) and everyone's warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("gpuvision").setLevel(logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    previous, terminated = None, []

    def terminate(signum, frame):
        terminated.append(signum)  # Terminated may come back as another error (e.g. an extension's ImportError)
        raise Terminated

    try:
        args = build_parser().parse_args(argv)
        args.argv = argv[1:]  # the command's own arguments (train --nproc hands them to its workers)
        # serve keeps Python's SIGTERM: uvicorn drains requests on it, then ends by the signal
        if args.command != "serve" and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, terminate)
        code = COMMANDS[args.command](args)
    except BaseException as e:
        if terminated:
            print("error: terminated (SIGTERM)", file=sys.stderr)
            code = 128 + signal.SIGTERM
        elif isinstance(e, UserError):
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message held
            code = 2
        elif isinstance(e, KeyboardInterrupt):
            print("error: interrupted", file=sys.stderr)
            code = 130
        else:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if "RANK" in os.environ:  # a worker of a distributed run ends right after its work (see end_process)
        from .train.distributed import end_process

        end_process(code)
    return code


def flag_table() -> str:
    """The README's table of every command's flags, made from the same declarations as the parser."""
    rows = ["| command | flag | default | meaning |", "|---|---|---|---|"]
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        first = True
        for action in sub._actions:
            if not action.option_strings or action.dest in ("help",):
                continue
            flag = " / ".join(action.option_strings)
            text = action.help or ""
            default = text.rsplit("(default: ", 1)[1].rstrip(")") if "(default: " in text else ""
            meaning = text.rsplit(" (default: ", 1)[0]
            if action.choices:
                meaning += f"; one of {', '.join(map(str, action.choices))}"
            rows.append(f"| {'`' + name + '`' if first else ''} | `{flag}` | {default} | {meaning} |")
            first = False
    return "\n".join(rows)
