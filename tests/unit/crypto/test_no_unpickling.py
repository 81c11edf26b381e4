"""Nothing in gpuvision unpickles: a pickle (torch.load's format, even with weights_only=True, which has had
code-execution bypasses) can run code when it is read. The package's source may not call a loader that unpickles,
except where an entry below says why it is safe."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "gpuvision"
LOADERS = re.compile(r"\b(?:torch\.load|torch\.jit\.load|torch\.export\.load|pickle\.loads?|pickle\.Unpickler|"
                     r"(?:np|numpy)\.load\([^)]*allow_pickle\s*=\s*True|joblib\.load|dill\.loads?|marshal\.loads?|"
                     r"shelve\.open)\b")
# (file, loader): why it is safe
ALLOWED = {
    ("export.py", "torch.export.load"): "the .pt2 parity check reloads only the program it has just made, from memory",
}


def code_lines(path: Path):
    """Each line with its comments and docstring prose left out (they may name a loader to say it is not used)."""
    in_string = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        quotes = stripped.count('"""')
        if in_string or stripped.startswith('"""'):
            in_string = in_string != (quotes % 2 == 1)
            continue
        yield number, line.split("#", 1)[0]


def test_no_unpickling_loader_is_called_outside_the_documented_exceptions():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in code_lines(path):
            for match in LOADERS.finditer(line):
                found.setdefault((path.name, match.group(0).split("(")[0]), []).append(f"{path}:{number}")
    unexpected = {key: where for key, where in found.items() if key not in ALLOWED}
    assert not unexpected, f"unpickling loaders in gpuvision: {unexpected}"
    assert set(found) == set(ALLOWED), "an allowed exception is gone: remove it from ALLOWED"


def test_the_checker_finds_what_it_looks_for():
    hits = [m.group(0) for m in LOADERS.finditer("torch.load(f, weights_only=True); pickle.loads(b); "
                                                 "np.load(p, allow_pickle=True); numpy.load(p)")]
    assert hits[:2] == ["torch.load", "pickle.loads"] and len(hits) == 3
