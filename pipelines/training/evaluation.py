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
from pipelines.fl.measures import dominance_ratio
from pipelines.reports.metrics import client_stats, path_metrics


@dataclass
class Predictions:
    """A model's predictions on a sample set.

    ``paths[p]``: (N,) int32 class per eval path, -1 where the path is undefined for the row
    (or the model has no such path); ``routed``: (N,) int32 prediction of the path the sample's
    modalities select (-1 for a sample with no modality); ``self_logits``: (N, 2, n_classes)
    float32 logits of the self classifiers of A and B (dataset order), NaN on rows where not both
    are defined: the imbalance ratio's input, kept for exactly two modalities only (None for a
    model with one modality or M > 2 modalities, whose ratio is undefined; nothing else reads it:
    the prediction files and reports are built from ``paths`` / ``routed``).
    """

    labels: np.ndarray
    paths: dict[str, np.ndarray]
    routed: np.ndarray
    self_logits: np.ndarray | None

    @staticmethod
    def concat(parts: Sequence["Predictions"]) -> "Predictions":
        """Rows of several predictions one after the other (e.g. one block per client model)."""
        logits = [p.self_logits for p in parts]
        return Predictions(
            labels=np.concatenate([p.labels for p in parts]),
            paths={k: np.concatenate([p.paths[k] for p in parts]) for k in parts[0].paths},
            routed=np.concatenate([p.routed for p in parts]),
            self_logits=None if any(x is None for x in logits) else np.concatenate(logits),
        )


def predict(model: torch.nn.Module, pool: TrainPool, eval_paths: Sequence[str], modalities: Sequence[str],
            batch_size: int, indices: np.ndarray | None = None) -> Predictions:
    """Run ``model`` (eval mode, no grad) over ``pool`` rows ``indices`` (all rows by default)
    in order. ``modalities`` names the dataset's modalities (dataset order): with exactly two
    (A and B) the self logits are kept for the imbalance ratio, otherwise not."""
    if indices is None:
        indices = np.arange(len(pool.labels))
    model.eval()
    own = set(getattr(model, "modalities", modalities))
    ratio_pair = [f"{m}_self" for m in modalities] if len(modalities) == 2 and own >= set(modalities) else None
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in eval_paths}
    routed_chunks, self_chunks, label_chunks = [], [], []
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
                both = out.valid[ratio_pair[0]] & out.valid[ratio_pair[1]]
                pair = torch.stack([out.paths[p] for p in ratio_pair], dim=1)
                self_chunks.append(torch.where(both[:, None, None], pair, torch.nan))
    n = len(indices)

    def gather(parts: list[torch.Tensor], dtype, empty: tuple[int, ...] = (0,)) -> np.ndarray:
        return torch.cat(parts).cpu().numpy().astype(dtype) if parts else np.zeros(empty, dtype)

    return Predictions(
        labels=gather(label_chunks, np.int64),
        paths={p: gather(chunks[p], np.int32) if chunks[p] else np.full(n, -1, np.int32) for p in eval_paths},
        routed=gather(routed_chunks, np.int32),
        self_logits=gather(self_chunks, np.float32, (0, 2, model.num_classes)) if ratio_pair else None,
    )


def _masked_argmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, logits.argmax(dim=1), -1).to(torch.int32)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def split_metrics(pred: Predictions, num_classes: int) -> dict[str, Any]:
    """The ``val`` / ``test`` block of a metrics line: accuracy, per-class recall and macro-F1 per
    path (null where a path has no rows; null recall for a class without rows) and the imbalance
    ratio (``imbalance_ratio``)."""
    accuracy, recall, macro_f1 = {}, {}, {}
    for p, preds in pred.paths.items():
        m = path_metrics(pred.labels, preds, num_classes)
        accuracy[p] = _finite(m.accuracy)
        recall[p] = [_finite(r) for r in m.recall]
        macro_f1[p] = _finite(m.macro_f1)
    return {"accuracy": accuracy, "per_class_recall": recall, "macro_f1": macro_f1,
            "imbalance_ratio": imbalance_ratio(pred)}


def imbalance_ratio(pred: Predictions) -> float | None:
    """ρ = Σ_i p_A,i[y_i] / Σ_i p_B,i[y_i]: FedCMI's dominance ratio (``dominance_ratio``) over
    every sample where both self classifiers are defined, p_m,i = softmax of m's self logits
    (float64). > 1: A's self classifier gives the ground truth more probability overall; 1:
    balanced. A ratio of sums, not a mean of per-sample ratios, so a sample whose p_B is ≈ 0
    weighs no more than any other. Defined for exactly two modalities: None for a one-modality
    model, for M > 2 modalities (a ratio of two has no single M-ary counterpart; reports and
    figures already treat a null ratio as "not measured") and without such a sample."""
    if pred.self_logits is None:
        return None
    both = np.isfinite(pred.self_logits).all(axis=(1, 2))
    if not both.any():
        return None
    logits = torch.from_numpy(pred.self_logits[both]).double()
    return _finite(float(dominance_ratio(logits[:, 0], logits[:, 1], torch.from_numpy(pred.labels[both]))))


def client_accuracy(clients: np.ndarray, labels: np.ndarray, routed: np.ndarray) -> dict[str, float | None]:
    """Mean, std and worst-10% mean of the per-client accuracy of routed predictions."""
    stats = client_stats(clients, labels, routed)
    return {"mean": _finite(stats.mean), "std": _finite(stats.std), "worst10": _finite(stats.worst10_mean)}


def selection_path(model_modalities: Sequence[str]) -> str:
    """The path whose validation accuracy picks the best round: ``fused`` for a model with two or
    more modalities, the only path (``<m>_self``) of a one-modality model."""
    return "fused" if len(model_modalities) >= 2 else f"{model_modalities[0]}_self"
