r"""Lightning training for torch_manualbp: MNIST data, the training system, callbacks that look inside
backpropagation, the report of what happened (the book's line per epoch, a summary, predictions), and the
``manualbp`` CLI.

The core (``torch_manualbp.functional``, ``.nn``, ``.Network``) never imports this package.
"""

from .callbacks import GradientAudit, LearningSpeedMonitor, TrainingSetMonitor
from .datamodule import MNISTDataModule
from .module import ManualBPClassifier
from .noise import GradientNoiseMonitor
from .report import EpochReport, PredictionReport
from .rules import HalveEtaOnPlateau
from .safety import AtomicCheckpointIO, DivergenceError, DivergenceGuard

__all__ = [
    "MNISTDataModule",
    "ManualBPClassifier",
    "LearningSpeedMonitor",
    "GradientAudit",
    "TrainingSetMonitor",
    "HalveEtaOnPlateau",
    "GradientNoiseMonitor",
    "DivergenceGuard",
    "DivergenceError",
    "AtomicCheckpointIO",
    "EpochReport",
    "PredictionReport",
]
