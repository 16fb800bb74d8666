"""Missing modalities, applied on top of what the shards hold (a modality absent in the shards stays
absent; nothing ever gains a modality).

- client level (the FedCMI setting): exactly ``missing_client_count(P, K)`` clients, drawn with the
  seed, hold one modality fewer for the whole run; the lost modality is uniform over the dataset's
  modalities per client, or fixed. Their samples lose that modality.
- sample level: each training sample independently, with probability P, loses one modality (uniform
  over the dataset's modalities, or fixed); a sample that does not have it is unchanged, and a sample
  is never stripped of its last modality.

Modalities are indexed in manifest order; "lost" arrays hold that index, or -1 for none.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.partitioning.streams import stream_rng

MISSING_LEVELS = ("client", "sample")


def missing_client_count(fraction: float, num_clients: int) -> int:
    """round(P * K), halves rounded up (0.5 clients of 1 -> 1), so P = 1 means every client."""
    return min(num_clients, math.floor(fraction * num_clients + 0.5))


def _draw_lost(rng: np.random.Generator, size: int, num_modalities: int, fixed: int | None) -> np.ndarray:
    if fixed is not None:
        return np.full(size, fixed, dtype=np.int8)
    return rng.integers(num_modalities, size=size).astype(np.int8)


def _strip(present: dict[str, np.ndarray], lost: np.ndarray) -> dict[str, np.ndarray]:
    return {m: mask & (lost != i) for i, (m, mask) in enumerate(present.items())}


def client_level_missing(
    client: np.ndarray, present: dict[str, np.ndarray], num_clients: int, fraction: float,
    fixed_modality: int | None, seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(availability per modality of every sample, lost modality index of every client)."""
    rng = stream_rng(seed, "missing")
    chosen = rng.choice(num_clients, size=missing_client_count(fraction, num_clients), replace=False)
    lost_by_client = np.full(num_clients, -1, dtype=np.int8)
    lost_by_client[chosen] = _draw_lost(rng, len(chosen), len(present), fixed_modality)
    return _strip(present, lost_by_client[client]), lost_by_client


def sample_level_missing(
    present: dict[str, np.ndarray], fraction: float, fixed_modality: int | None, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(availability per modality of every sample, modality index each sample lost or -1)."""
    rng = stream_rng(seed, "missing")
    num_samples = len(next(iter(present.values())))
    hit = rng.random(num_samples) < fraction
    lost = _draw_lost(rng, num_samples, len(present), fixed_modality)
    stacked = np.stack(list(present.values()))
    has_lost = stacked[np.maximum(lost, 0), np.arange(num_samples)]
    strippable = hit & has_lost & (stacked.sum(axis=0) >= 2)
    lost = np.where(strippable, lost, np.int8(-1)).astype(np.int8)
    return _strip(present, lost), lost
