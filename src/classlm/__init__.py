"""classlm: causal language models as text classifiers with a calibrated probability for every class.

The public names are loaded lazily (PEP 562) so that ``import classlm.metrics`` and the rest of the pure layer do
not pull in torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LMClassifier": "classlm.classifier",
    "Ensemble": "classlm.ensemble",
    "RemoteClassifier": "classlm.backends.remote",
    "LabelSet": "classlm.labels",
    "PromptTemplate": "classlm.prompts",
    "ModelConfig": "classlm.config",
    "CalibrationConfig": "classlm.config",
    "TemperatureScaler": "classlm.calibration",
    "EvalReport": "classlm.reports",
    "evaluate": "classlm.evaluation",
    "load": "classlm.classifier",
    "load_dataset": "classlm.data",
    "ClasslmError": "classlm.errors",
    "ConfigError": "classlm.errors",
    "DataError": "classlm.errors",
    "ModelLoadError": "classlm.errors",
    "ArtifactError": "classlm.errors",
    "NotFittedError": "classlm.errors",
}
__all__ = [
    "ArtifactError",
    "CalibrationConfig",
    "ClasslmError",
    "ConfigError",
    "DataError",
    "EvalReport",
    "LMClassifier",
    "Ensemble",
    "LabelSet",
    "ModelConfig",
    "ModelLoadError",
    "NotFittedError",
    "PromptTemplate",
    "RemoteClassifier",
    "TemperatureScaler",
    "evaluate",
    "load",
    "load_dataset",
]

if TYPE_CHECKING:
    from classlm.backends.remote import RemoteClassifier
    from classlm.calibration import TemperatureScaler
    from classlm.classifier import LMClassifier
    from classlm.classifier import load_classifier as load
    from classlm.config import CalibrationConfig, ModelConfig
    from classlm.data import load_dataset
    from classlm.ensemble import Ensemble
    from classlm.errors import (
        ArtifactError,
        ClasslmError,
        ConfigError,
        DataError,
        ModelLoadError,
        NotFittedError,
    )
    from classlm.evaluation import evaluate
    from classlm.labels import LabelSet
    from classlm.prompts import PromptTemplate
    from classlm.reports import EvalReport


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'classlm' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    value = getattr(module, "load_classifier" if name == "load" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
