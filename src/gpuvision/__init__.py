"""gpuvision: from a folder of labelled images to a fast, small, safe image classifier.

    import gpuvision
    result = gpuvision.train(data="digits", out="runs/digits")
    report = gpuvision.evaluate(str(result.model_dir))
    model = gpuvision.load(result.model_dir)
    model.predict(["some.png"], top_k=3)
"""

__version__ = "0.1.0"

from .artifact import Model, load  # noqa: E402
from .config import EvaluateConfig, TrainConfig  # noqa: E402
from .data.inspect import inspect_source  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .train.trainer import TrainResult, train  # noqa: E402

__all__ = ["EvaluateConfig", "Model", "TrainConfig", "TrainResult", "UserError", "evaluate", "inspect_source",
           "load", "train", "__version__"]
