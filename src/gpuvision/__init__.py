"""gpuvision: from a folder of labelled images to a fast, small, safe image classifier.

    import gpuvision
    result = gpuvision.train(data="digits", out="runs/digits")
    report = gpuvision.evaluate(str(result.model_dir))
    model = gpuvision.load(result.model_dir)
    model.predict(["some.png"], top_k=3)
"""

from .artifact import Manifest, ModelDir
from .config import Access, EvaluateConfig, TrainConfig
from .data.inspect import inspect_source
from .errors import UserError
from .evaluate import evaluate
from .runtime import Model, load
from .train.trainer import TrainResult, train
from .version import __version__

__all__ = ["Access", "EvaluateConfig", "Manifest", "Model", "ModelDir", "TrainConfig", "TrainResult", "UserError",
           "evaluate", "inspect_source", "load", "train", "__version__"]
