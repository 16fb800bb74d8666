"""What the balancing methods measure: ground-truth probabilities and the dominance ratio of two
modalities, class prototypes (class-mean features) and the prototype logits s_c = −‖u − P_c‖₂.
Every function is vectorised over the batch (no per-sample Python)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipelines.fl.base import TrainPool
from pipelines.models import MultimodalNet

#: probabilities (and sums of them) are clamped to >= PROB_EPS before a ratio is taken
PROB_EPS = 1e-6


def ground_truth_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """softmax(logits)[i, labels[i]] for every row, (n,)."""
    return logits.softmax(dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)


def dominance_ratio(logits_a: Tensor, logits_b: Tensor, labels: Tensor) -> Tensor:
    """ρ = Σ_i softmax(logits_A)_i[y_i] / Σ_i softmax(logits_B)_i[y_i] (denominator clamped to
    PROB_EPS): > 1 when the first modality is the dominant one on these samples."""
    num = ground_truth_probability(logits_a, labels).sum()
    den = ground_truth_probability(logits_b, labels).sum()
    return num / den.clamp_min(PROB_EPS)


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(class means (C, d), counts (C,)) of ``features`` (n, d) by ``labels``; a class without
    samples has mean 0 and count 0."""
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    sums = features.new_zeros((num_classes, features.shape[1])).index_add_(0, labels, features)
    return sums / counts.clamp_min(1).unsqueeze(1), counts


def prototype_logits(features: Tensor, prototypes: Tensor, known: Tensor) -> Tensor:
    """s[i, c] = −‖u_i − P_c‖₂ (``torch.cdist``), −inf for the classes without a prototype
    (``known`` (C,) False), so that a softmax over s ignores them."""
    return (-torch.cdist(features, prototypes)).masked_fill(~known, float("-inf"))


def prototype_accuracy(features: Tensor, labels: Tensor, prototypes: Tensor, known: Tensor) -> Tensor:
    """The share of rows whose nearest prototype is their class's (0-d tensor; 0 for no rows)."""
    if features.shape[0] == 0:
        return features.new_zeros(())
    return (prototype_logits(features, prototypes, known).argmax(dim=1) == labels).float().mean()


@torch.no_grad()
def collect_features(model: MultimodalNet, pool: TrainPool, rows: np.ndarray, batch_size: int,
                     device: torch.device) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """m -> (features S_m h_m (n_m, d), labels (n_m,), pool rows (n_m,)) over the ``rows`` that
    have m, with ``model`` in eval mode and no gradient (its mode is restored after)."""
    training = model.training
    model.eval()
    chunks: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {m: [] for m in model.modalities}
    for batch in pool.batches(rows, batch_size, None, shuffle=False, device=device):
        outputs = model(batch.inputs, batch.present)
        for m in model.modalities:
            keep = batch.present[m].bool()
            chunks[m].append((outputs.features[m][keep], batch.labels[keep], batch.indices[keep]))
    model.train(training)
    out = {}
    for m, parts in chunks.items():
        d = model.branches[m].classifier.in_features
        if parts:
            out[m] = tuple(torch.cat(p) for p in zip(*parts))
        else:
            out[m] = (torch.zeros((0, d), device=device), torch.zeros(0, dtype=torch.long, device=device),
                      torch.zeros(0, dtype=torch.long, device=device))
    return out
