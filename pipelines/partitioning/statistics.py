"""Statistics of a partition: per-client class counts, modality availability and label heterogeneity.

Heterogeneity compares each client's label distribution p_k with the global one g (the label
distribution of all partitioned samples):

- total-variation distance  TV(p_k, g) = 1/2 * sum_c |p_k[c] - g[c]|, in [0, 1];
- Jensen-Shannon distance   sqrt(JSD(p_k, g)) with base-2 logarithms, in [0, 1] (as
  ``scipy.spatial.distance.jensenshannon(p, g, base=2)``, but clipped at 0 before the square root:
  scipy returns NaN when rounding makes the divergence of near-identical distributions negative);
- effective number of classes exp(H(p_k)), H the natural-log entropy: 1 for a one-class client,
  the class count for a uniform one.

Means are unweighted over clients. Floats are rounded to 6 decimals so that stats.json does not
depend on the last bits of a CPU's summation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import entr, rel_entr

DECIMALS = 6


def _rounded(values: np.ndarray | float) -> Any:
    return np.round(values, DECIMALS).tolist()


def class_counts(client: np.ndarray, labels: np.ndarray, num_clients: int, num_classes: int) -> np.ndarray:
    """(clients, classes) int64 matrix of sample counts."""
    flat = client.astype(np.int64) * num_classes + labels
    return np.bincount(flat, minlength=num_clients * num_classes).reshape(num_clients, num_classes)


def label_heterogeneity(counts: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-client TV distance, JS distance and effective classes of a (clients, classes) count
    matrix in which every client holds at least one sample; also the global effective classes."""
    counts = np.asarray(counts, dtype=np.float64)
    client_dist = counts / counts.sum(axis=1, keepdims=True)
    global_dist = counts.sum(axis=0) / counts.sum()
    midpoint = (client_dist + global_dist) / 2
    divergence = (rel_entr(client_dist, midpoint).sum(axis=1) + rel_entr(global_dist, midpoint).sum(axis=1)) / 2
    return {
        "tv_distance": 0.5 * np.abs(client_dist - global_dist).sum(axis=1),
        "js_distance": np.sqrt(np.maximum(divergence / np.log(2), 0.0)),
        "effective_classes": np.exp(entr(client_dist).sum(axis=1)),
        "global_effective_classes": float(np.exp(entr(global_dist).sum())),
    }


def partition_statistics(
    client: np.ndarray, labels: np.ndarray, available: dict[str, np.ndarray], num_clients: int, num_classes: int
) -> dict[str, Any]:
    """JSON-ready statistics of the assigned samples (``client``, ``labels`` and ``available``
    aligned); every client must hold at least one sample."""
    counts = class_counts(client, labels, num_clients, num_classes)
    sizes = counts.sum(axis=1)
    modality_counts = {m: np.bincount(client[mask], minlength=num_clients) for m, mask in available.items()}
    all_modalities = np.logical_and.reduce(list(available.values()))
    measures = label_heterogeneity(counts)
    return {
        "num_clients": num_clients,
        "num_samples": int(sizes.sum()),
        "client_sizes": sizes.tolist(),
        "class_counts": counts.tolist(),
        "modality_counts": {m: c.tolist() for m, c in modality_counts.items()},
        "multimodal_counts": np.bincount(client[all_modalities], minlength=num_clients).tolist(),
        "client_modalities": {m: (c > 0).tolist() for m, c in modality_counts.items()},
        "sizes": {
            "min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()),
            "mean": _rounded(sizes.mean()),
        },
        "heterogeneity": {
            "mean_tv_distance": _rounded(measures["tv_distance"].mean()),
            "mean_js_distance": _rounded(measures["js_distance"].mean()),
            "mean_effective_classes": _rounded(measures["effective_classes"].mean()),
            "global_effective_classes": _rounded(measures["global_effective_classes"]),
            "tv_distance": _rounded(measures["tv_distance"]),
            "js_distance": _rounded(measures["js_distance"]),
            "effective_classes": _rounded(measures["effective_classes"]),
            "classes_present": (counts > 0).sum(axis=1).tolist(),
        },
    }
