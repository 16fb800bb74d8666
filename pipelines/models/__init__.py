"""Models: modality encoders, FedCMI's projectors and shared classifiers, fusion heads."""

from pipelines.models.encoders import ENCODERS
from pipelines.models.heads import FUSIONS, PROJECTORS
from pipelines.models.net import ModelConfig, ModelOutputs, MultimodalNet, build_model

__all__ = ["ENCODERS", "FUSIONS", "PROJECTORS", "ModelConfig", "ModelOutputs", "MultimodalNet", "build_model"]
