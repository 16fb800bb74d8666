"""Classification and fairness metrics recomputed from saved predictions.

Everything is derived from confusion counts built with one ``np.bincount`` (no per-sample loops).
Conventions (the README's report section repeats them):

- A prediction of ``-1`` means the path is undefined for that row (e.g. ``fused`` on a sample
  missing a modality); such rows are left out of that path's metrics.
- Class-averaged metrics (balanced accuracy, macro-F1, worst-class recall, recall std and gap)
  average over the classes that occur among the evaluated rows' labels. Balanced accuracy is the
  mean per-class recall (as scikit-learn's ``balanced_accuracy_score``); a class's F1 is 0 when it
  is never predicted correctly. The recall standard deviation is the population one (ddof=0).
- Client statistics weight every client equally; ``worst10_mean`` is the mean of the lowest
  ``ceil(0.1 * K)`` client accuracies among the K clients with at least one evaluated sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.errors import CmiError

#: percentage of clients averaged by the worst-clients statistic
WORST_PERCENT = 10


def confusion_counts(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class.

    Rows whose prediction is negative (path undefined) are skipped.
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    defined = preds >= 0
    labels, preds = labels[defined], preds[defined]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes or preds.max() >= num_classes):
        raise CmiError(
            f"predictions hold class indices outside 0..{num_classes - 1}: they do not belong to this "
            "run's classes; re-create the run with `cmi train`."
        )
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class PathMetrics:
    """Metrics of one prediction path on one prediction file.

    ``recall`` and ``f1`` are per class (NaN recall for a class with no evaluated rows);
    ``rows`` is how many rows the path is defined on and ``coverage`` that count over all rows.
    """

    rows: int
    coverage: float
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    recall: np.ndarray
    f1: np.ndarray
    worst_class: int | None
    worst_class_recall: float
    recall_std: float
    recall_gap: float


def path_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> PathMetrics:
    """All per-path metrics of ``preds`` against ``labels`` (see the module docstring)."""
    counts = confusion_counts(labels, preds, num_classes)
    correct = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, correct / support, np.nan)
        precision = np.where(predicted > 0, correct / predicted, 0.0)
        f1 = np.where(correct > 0, 2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
    rows = int(counts.sum())
    total = int(np.asarray(preds).size)
    nan = float("nan")
    if not present.any():
        return PathMetrics(rows, rows / total if total else nan, nan, nan, nan, recall, f1, None, nan, nan, nan)
    seen = recall[present]
    worst = int(np.flatnonzero(present)[np.argmin(seen)])
    return PathMetrics(
        rows=rows,
        coverage=rows / total,
        accuracy=float(correct.sum() / rows),
        balanced_accuracy=float(seen.mean()),
        macro_f1=float(f1[present].mean()),
        recall=recall,
        f1=f1,
        worst_class=worst,
        worst_class_recall=float(recall[worst]),
        recall_std=float(seen.std()),
        recall_gap=float(seen.max() - seen.min()),
    )


def paired_accuracy_gap(labels: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray) -> float:
    """accuracy(a) − accuracy(b) over the rows where both paths are defined (NaN if none)."""
    both = (preds_a >= 0) & (preds_b >= 0)
    if not both.any():
        return float("nan")
    return float(np.mean(preds_a[both] == labels[both]) - np.mean(preds_b[both] == labels[both]))


def worst_count(num_clients: int) -> int:
    """How many clients the worst-10% statistic averages: ceil(10% of K), in exact integer math."""
    return -(-num_clients * WORST_PERCENT // 100)


@dataclass(frozen=True)
class ClientStats:
    """Accuracy of a model on each client's own data and its spread over clients.

    ``clients`` lists the client ids with at least one evaluated sample (ascending), aligned with
    ``samples`` and ``accuracy``; ``mean``/``std`` (ddof=0) weight clients equally.
    """

    clients: np.ndarray
    samples: np.ndarray
    accuracy: np.ndarray
    mean: float
    std: float
    worst10_mean: float
    worst10_count: int


def client_stats(clients: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> ClientStats:
    """Per-client accuracy (undefined predictions left out) and mean, std, worst-10% mean."""
    clients = np.asarray(clients, dtype=np.int64)
    defined = np.asarray(preds) >= 0
    hits = (np.asarray(preds) == np.asarray(labels))[defined]
    owners = clients[defined]
    if owners.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        nan = float("nan")
        return ClientStats(empty, empty, np.zeros(0), nan, nan, nan, 0)
    samples = np.bincount(owners)
    correct = np.bincount(owners, weights=hits.astype(np.float64))
    ids = np.flatnonzero(samples)
    accuracy = correct[ids] / samples[ids]
    k = worst_count(ids.size)
    return ClientStats(
        clients=ids,
        samples=samples[ids],
        accuracy=accuracy,
        mean=float(accuracy.mean()),
        std=float(accuracy.std()),
        worst10_mean=float(np.sort(accuracy)[:k].mean()),
        worst10_count=k,
    )
