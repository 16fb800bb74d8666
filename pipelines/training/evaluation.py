"""Evaluation of a model on a sample set: batched, vectorised predictions per eval path, and the
metrics of one ``metrics.jsonl`` line.

The metric arithmetic itself (confusion counts, per-class recall, macro-F1, client statistics) is
:mod:`pipelines.reports.metrics`, shared with `cmi report` so both agree to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipelines.fl import TrainPool
from pipelines.fl.fedcmi import PROB_EPS, ground_truth_probability
from pipelines.reports.metrics import client_stats, path_metrics


@dataclass
class Predictions:
    """A model's predictions on a sample set.

    ``paths[p]``: (N,) int32 class per eval path, -1 where the path is undefined for the row
    (or the model has no such path); ``routed``: (N,) int32 prediction of the path the sample's
    modalities select (-1 for a sample with no modality); ``ratio``: (N,) float64 P_A/P_B of the
    ground-truth class under the two self classifiers, NaN where not both are defined (None for
    a model without two modalities).
    """

    labels: np.ndarray
    paths: dict[str, np.ndarray]
    routed: np.ndarray
    ratio: np.ndarray | None

    @staticmethod
    def concat(parts: Sequence["Predictions"]) -> "Predictions":
        """Rows of several predictions one after the other (e.g. one block per client model)."""
        ratios = [p.ratio for p in parts]
        return Predictions(
            labels=np.concatenate([p.labels for p in parts]),
            paths={k: np.concatenate([p.paths[k] for p in parts]) for k in parts[0].paths},
            routed=np.concatenate([p.routed for p in parts]),
            ratio=None if any(r is None for r in ratios) else np.concatenate(ratios),
        )


def predict(model: torch.nn.Module, pool: TrainPool, eval_paths: Sequence[str], modalities: Sequence[str],
            batch_size: int, indices: np.ndarray | None = None) -> Predictions:
    """Run ``model`` (eval mode, no grad) over ``pool`` rows ``indices`` (all rows by default)
    in order. ``modalities`` names A and B (dataset order) for the imbalance ratio."""
    if indices is None:
        indices = np.arange(len(pool.labels))
    model.eval()
    own = set(getattr(model, "modalities", modalities))
    ratio_pair = [f"{m}_self" for m in modalities] if len(modalities) == 2 and own >= set(modalities) else None
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in eval_paths}
    routed_chunks, ratio_chunks, label_chunks = [], [], []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in pool.batches(indices, batch_size, None, shuffle=False, device=device):
            out = model(batch.inputs, batch.present)
            for p in eval_paths:
                if p in out.paths:
                    chunks[p].append(_masked_argmax(out.paths[p], out.valid[p]))
            routed_chunks.append(_masked_argmax(out.routed, out.routed_valid))
            label_chunks.append(batch.labels)
            if ratio_pair:
                a, b = (ground_truth_probability(out.paths[p].double(), batch.labels) for p in ratio_pair)
                both = out.valid[ratio_pair[0]] & out.valid[ratio_pair[1]]
                ratio_chunks.append(torch.where(both, a / b.clamp_min(PROB_EPS), torch.nan))
    n = len(indices)

    def gather(parts: list[torch.Tensor], dtype) -> np.ndarray:
        return torch.cat(parts).cpu().numpy().astype(dtype) if parts else np.zeros(0, dtype)

    return Predictions(
        labels=gather(label_chunks, np.int64),
        paths={p: gather(chunks[p], np.int32) if chunks[p] else np.full(n, -1, np.int32) for p in eval_paths},
        routed=gather(routed_chunks, np.int32),
        ratio=gather(ratio_chunks, np.float64) if ratio_pair else None,
    )


def _masked_argmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, logits.argmax(dim=1), -1).to(torch.int32)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def split_metrics(pred: Predictions, num_classes: int) -> dict[str, Any]:
    """The ``val`` / ``test`` block of a metrics line: accuracy, per-class recall and macro-F1 per
    path (null where a path has no rows; null recall for a class without rows) and the mean
    imbalance ratio over samples that have both modalities."""
    accuracy, recall, macro_f1 = {}, {}, {}
    for p, preds in pred.paths.items():
        m = path_metrics(pred.labels, preds, num_classes)
        accuracy[p] = _finite(m.accuracy)
        recall[p] = [_finite(r) for r in m.recall]
        macro_f1[p] = _finite(m.macro_f1)
    ratio = None
    if pred.ratio is not None and np.isfinite(pred.ratio).any():
        ratio = float(np.nanmean(pred.ratio))
    return {"accuracy": accuracy, "per_class_recall": recall, "macro_f1": macro_f1, "imbalance_ratio": ratio}


def client_accuracy(clients: np.ndarray, labels: np.ndarray, routed: np.ndarray) -> dict[str, float | None]:
    """Mean, std and worst-10% mean of the per-client accuracy of routed predictions."""
    stats = client_stats(clients, labels, routed)
    return {"mean": _finite(stats.mean), "std": _finite(stats.std), "worst10": _finite(stats.worst10_mean)}


def selection_path(model_modalities: Sequence[str]) -> str:
    """The path whose validation accuracy picks the best round: ``fused`` for a two-modality
    model, the only path (``<m>_self``) of a one-modality model."""
    return "fused" if len(model_modalities) == 2 else f"{model_modalities[0]}_self"
