"""gpuvision: from a folder of labelled images to a fast, small, safe image classifier.

    import gpuvision
    result = gpuvision.train(data="digits", out="runs/digits")
    report = gpuvision.evaluate(str(result.model_dir))
    model = gpuvision.load(result.model_dir)
    model.predict(["some.png"], top_k=3)

The names below are imported when first used (PEP 562), so `import gpuvision` and `gpuvision --version` do not pay
for torch (seconds).
"""

import sys
import types
from importlib import import_module

from .version import __version__  # noqa: F401  (listed in __all__ below)

_WHERE = {"Manifest": "artifact", "ModelDir": "artifact", "Access": "config", "EvaluateConfig": "config",
          "TrainConfig": "config", "inspect_source": "data.inspect", "UserError": "errors", "evaluate": "evaluate",
          "Model": "runtime", "load": "runtime", "TrainResult": "train.trainer", "train": "train.trainer"}

__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'gpuvision' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """`gpuvision.train` and `gpuvision.evaluate` are functions, but also the names of a subpackage and a module:
    importing those binds the module to the package's attribute, which would hide the function. The import
    system's binding is skipped here (the modules stay in sys.modules), so the functions keep their names."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name, "").split(".")[0] == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
