"""The demo's directory: each run writes a new one, `latest` moves only when a run is complete, and a run that
stops early says so (the training itself is stubbed: tests/e2e/test_ux.py runs the real demo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpuvision import demo as demo_module
from gpuvision.errors import BadInput


def fake_run(run, on_event, samples):
    (run / "model").mkdir()
    return {"schema_version": 1, "run_dir": str(run), "model_dir": str(run / "model")}


def status(run):
    return json.loads((run / "run.json").read_text())


def test_latest_moves_only_when_a_new_run_is_complete(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    monkeypatch.setattr(demo_module, "_run", fake_run)
    first = demo_module.demo(str(root))
    assert (root / "latest").resolve() == Path(first["run_dir"]).resolve()

    def interrupted(run, on_event, samples):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_module.demo(str(root))
    runs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2 and status(runs[0])["status"] == "done" and status(runs[1])["status"] == "interrupted"
    assert (root / "latest").resolve() == runs[0].resolve()  # the complete run is still the latest

    # a run killed outright (its process gone) still says "running": the next demo marks it interrupted
    killed = root / "19990101-000000"
    killed.mkdir()
    (killed / "run.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345}))
    demo_module._prepare(root)
    assert status(killed)["status"] == "interrupted"

    monkeypatch.setattr(demo_module, "_run", fake_run)
    last = demo_module.demo(str(root))
    assert [p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()] == [os.path.basename(
        last["run_dir"])]  # earlier runs go once a new one is complete
    assert json.loads((root / "demo.json").read_text())["latest"] == os.path.basename(last["run_dir"])


def test_only_a_demo_directory_is_used(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(BadInput, match="not a demo directory"):
        demo_module.demo(str(tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]
