"""The CLI reads its flags, defaults and choices from the config dataclasses and the registries."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from gpuvision.cli import build_parser, main
from gpuvision.config import BenchConfig, CompressConfig, DoctorConfig, EvaluateConfig, ExportConfig, TrainConfig
from gpuvision.models import list_models
from gpuvision.train.recipes import RECIPES


def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


@pytest.mark.parametrize("command, config_type", [("train", TrainConfig), ("evaluate", EvaluateConfig),
                                                  ("compress", CompressConfig), ("export", ExportConfig),
                                                  ("bench", BenchConfig), ("doctor", DoctorConfig)])
def test_every_setting_is_a_flag_whose_help_shows_its_dataclass_default(command, config_type):
    sub = _subparser(command)
    by_dest = {a.dest: a for a in sub._actions}
    for f in fields(config_type):
        if not f.metadata.get("flag", True):
            continue
        action = by_dest[f.name]
        default = f.default if f.default is not MISSING else None
        shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert "(default: " in action.help, (f.name, action.help)
        if "(default: " not in f.metadata["help"]:
            assert action.help.endswith(f"(default: {shown})"), (f.name, action.help)


def test_choices_come_from_the_registries():
    from gpuvision.attacks import ATTACKS
    from gpuvision.cli import REGISTRY_NAMES
    from gpuvision.compress import PLANS
    from gpuvision.export import FORMATS

    by_dest = {a.dest: a for a in _subparser("train")._actions}
    assert by_dest["model"].choices == ["auto", *list_models()]
    assert by_dest["recipe"].choices == ["auto", *RECIPES.names()]
    # the CLI names them without importing the registries (torch): the names must stay the registries' own
    assert REGISTRY_NAMES == {"models": tuple(list_models()), "recipes": tuple(RECIPES.names()),
                              "methods": tuple(PLANS), "formats": tuple(FORMATS.names()),
                              "attacks": tuple(ATTACKS.names())}


def test_parsing_and_help_import_no_torch():
    """`gpuvision --version`, `--help` and any command's first line come before torch is imported (seconds)."""
    import subprocess
    import sys

    code = ("import sys, io; from gpuvision.cli import build_parser, _starting\n"
            "args = build_parser().parse_args(['evaluate', 'm'])\n"
            "terminal = io.StringIO(); terminal.isatty = lambda: True; sys.stderr = terminal; _starting(args)\n"
            "import gpuvision; gpuvision.__version__; sys.stderr = sys.__stderr__\n"
            "print(terminal.getvalue().strip(), sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "evaluating m ... []", out.stdout


def test_bad_flag_values_exit_2_in_one_line(capsys):
    for args in (["train", "--epochs", "inf"], ["train", "--seed", "-1"], ["train", "--model", "vgg"],
                 ["train", "--epochs", "ten"], ["export", "m", "--format", "tflite"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err


def test_the_readme_lists_every_flag_as_the_parser_has_it():
    from pathlib import Path

    from gpuvision.cli import flag_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert flag_table() in readme, "README.md's flag table is stale: paste gpuvision.cli.flag_table() into it"
