"""Unimodal FedAvg: the paper's unimodal baselines, one modality's encoder, projector and classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pipelines.errors import CmiError
from pipelines.fl.base import FedAvg, TrainConfig
from pipelines.models import MultimodalNet
from pipelines.shards import ModalitySpec


@dataclass(frozen=True)
class UnimodalHparams:
    """modality: the modality the baseline is trained on (required: a name from the dataset manifest)."""

    modality: str | None = None


class Unimodal(FedAvg):
    """FedAvg on a one-modality model (E, S, C; build it with ``select_specs``): CE of the
    ``<m>_self`` path. Only the rows that have the modality train; a client without any reports
    ``num_samples == 0`` and no trained groups."""

    name = "unimodal"
    Hparams = UnimodalHparams

    @classmethod
    def select_specs(cls, specs: list[ModalitySpec], hparams: UnimodalHparams) -> list[ModalitySpec]:
        names = [s.name for s in specs]
        if hparams.modality not in names:
            raise CmiError(f"method unimodal needs its `modality` set to one of {', '.join(names)} "
                           f"(got {hparams.modality!r}).")
        return [s for s in specs if s.name == hparams.modality]

    def __init__(self, model_factory: Callable[[], MultimodalNet], train: TrainConfig, hparams: UnimodalHparams,
                 device: torch.device):
        super().__init__(model_factory, train, hparams, device)
        if self.modalities != (hparams.modality,):
            raise ValueError(f"unimodal {hparams.modality!r}: the model factory builds {self.modalities}; "
                             "build the model from Unimodal.select_specs(specs, hparams)")
