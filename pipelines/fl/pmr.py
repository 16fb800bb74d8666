"""PMR, prototypical modal rebalance (Fan et al., CVPR 2023), in federated form: each client
rebalances with its own class prototypes; stateless across rounds. Definition:
``shared/spec/methods.md``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import Batch, FedAvg, FedAvgHparams, RoundContext, TrainPool
from pipelines.fl.measures import class_means, collect_features, dominance_ratio, prototype_logits
from pipelines.models import ModelOutputs, MultimodalNet


@dataclass(frozen=True)
class PMRHparams(FedAvgHparams):
    """alpha: α, weight of the weak modality's prototype cross-entropy (1.0, the paper; the
    authors' scripts use 2.0)."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise CmiError(f"pmr.alpha must be >= 0, got {self.alpha}.")


@dataclass
class PMRContext(RoundContext):
    """``prototypes`` / ``known``: m -> the client's class prototypes (C, d) of this local epoch
    and which classes have one (C,) bool."""

    prototypes: dict[str, Tensor] = field(default_factory=dict)
    known: dict[str, Tensor] = field(default_factory=dict)


class PMR(FedAvg):
    """The shared objective plus α·CE(s_weak) on the multimodal samples of a batch.

    At the start of every local epoch the client recomputes its prototypes P^m_c: the class means
    of the features u_m = S_m h_m (the fusion head's inputs) over its rows that have m, with the
    current local model in eval mode and no gradient. Per batch, on the samples with both
    modalities: s_m = −‖u_m − P^m_c‖₂, ρ = Σ softmax(s_A)[y] / Σ softmax(s_B)[y] (no gradient),
    the weak modality is B when ρ > 1, else A, and the objective adds α·CE(s_weak, y) (summed
    over those samples, divided by the batch size as every term). The gradient pulls the weak
    modality's features towards their class prototype and away from the others."""

    name = "pmr"
    two_modalities = True
    Hparams = PMRHparams
    Context = PMRContext

    def epoch_batches(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, generator: torch.Generator,
                      ctx: PMRContext, epoch: int) -> Iterator[Batch]:
        for m, (features, labels, _) in collect_features(model, pool, rows, self.train.batch_size,
                                                         self.device).items():
            ctx.prototypes[m], counts = class_means(features, labels, model.num_classes)
            ctx.known[m] = counts > 0
        return super().epoch_batches(model, pool, rows, generator, ctx, epoch)

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: PMRContext) -> Tensor:
        loss = super().local_loss(model, outputs, batch, ctx)
        complete = outputs.valid["fused"]
        if not self.hparams.alpha or not bool(complete.any()):
            return loss
        a, b = self.modalities
        labels = batch.labels[complete]
        logits = {m: prototype_logits(outputs.features[m][complete], ctx.prototypes[m], ctx.known[m]) for m in (a, b)}
        rho = dominance_ratio(logits[a].detach(), logits[b].detach(), labels)
        weak = b if bool(rho > 1) else a
        term = F.cross_entropy(logits[weak], labels, reduction="sum")
        return loss + self.hparams.alpha * term / outputs.routed_valid.sum()
