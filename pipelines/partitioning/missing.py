"""Missing modalities, applied on top of what the shards hold (a modality absent in the shards stays
absent; nothing ever gains a modality).

What is lost is a *set* of modalities, held as a bitmask over the modalities in manifest order: bit
``i`` (value ``1 << i``) set = modality ``i`` lost; 0 = nothing lost. A drawn set is a non-empty
*proper* subset of the M modalities (someone always keeps at least one), uniform over the
``2**M - 2`` of them, numbered by their mask: ``mask = 1 + rng.integers(2**M - 2)``. So every set
has probability ``1 / (2**M - 2)``, and each modality is lost with probability exactly 1/2 whatever
M (it belongs to ``2**(M-1) - 1`` of the sets). With two modalities the sets are {A} (mask 1) and
{B} (mask 2): ``rng.integers(2)``, the draw of the one-modality version, so a two-modality
partition is the same as before sets existed, seed for seed. A fixed set (``--missing-modality``,
one name or several) is lost as it is and draws nothing.

- client level (the FedCMI setting): exactly ``missing_client_count(P, K)`` clients, drawn with the
  seed, lose their set for the whole run (drawn per client, or fixed). Their samples lose the
  modalities of the set that they have.
- sample level: each training sample independently, with probability P, loses a set (drawn per
  sample, or fixed): the modalities of the set that it has. A sample that has none of them, or
  that would be left with nothing (it has only modalities of the set), is unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.partitioning.streams import stream_rng

MISSING_LEVELS = ("client", "sample")


def missing_client_count(fraction: float, num_clients: int) -> int:
    """round(P * K), halves rounded up (0.5 clients of 1 -> 1), so P = 1 means every client."""
    return min(num_clients, math.floor(fraction * num_clients + 0.5))


def lost_set_count(num_modalities: int) -> int:
    """How many sets can be lost: the non-empty proper subsets, ``2**M - 2`` (0 for one modality)."""
    return max(2 ** num_modalities - 2, 0)


def modality_mask(names, modalities: list[str]) -> int:
    """The bitmask of ``names`` (an iterable of modality names) over ``modalities`` (manifest order)."""
    return sum(1 << modalities.index(m) for m in set(names))


def mask_names(mask: int, modalities: list[str]) -> list[str]:
    """The modalities of ``mask``, in manifest order."""
    return [m for i, m in enumerate(modalities) if mask >> i & 1]


def _draw_lost(rng: np.random.Generator, size: int, num_modalities: int, fixed: int | None) -> np.ndarray:
    """``size`` lost-set masks: ``fixed`` each time, else uniform over the non-empty proper subsets."""
    if fixed is not None:
        return np.full(size, fixed, dtype=np.int64)
    sets = lost_set_count(num_modalities)
    if sets == 0 or size == 0:  # one modality: nothing can be lost
        return np.zeros(size, dtype=np.int64)
    return rng.integers(sets, size=size).astype(np.int64) + 1


def _held_mask(present: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) bitmask of the modalities each sample has."""
    held = np.zeros(len(next(iter(present.values()))), dtype=np.int64)
    for i, mask in enumerate(present.values()):
        held |= np.asarray(mask, dtype=np.int64) << i
    return held


def _strip(present: dict[str, np.ndarray], lost: np.ndarray) -> dict[str, np.ndarray]:
    return {m: mask & (lost >> i & 1 == 0) for i, (m, mask) in enumerate(present.items())}


def client_level_missing(
    client: np.ndarray, present: dict[str, np.ndarray], num_clients: int, fraction: float,
    fixed_mask: int | None, seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(availability per modality of every sample, lost-set mask of every client, 0 for none)."""
    rng = stream_rng(seed, "missing")
    chosen = rng.choice(num_clients, size=missing_client_count(fraction, num_clients), replace=False)
    lost_by_client = np.zeros(num_clients, dtype=np.int64)
    lost_by_client[chosen] = _draw_lost(rng, len(chosen), len(present), fixed_mask)
    return _strip(present, lost_by_client[client]), lost_by_client


def sample_level_missing(
    present: dict[str, np.ndarray], fraction: float, fixed_mask: int | None, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(availability per modality of every sample, mask of the modalities each sample lost, 0 for
    none: the drawn set's modalities that the sample had)."""
    rng = stream_rng(seed, "missing")
    num_samples = len(next(iter(present.values())))
    hit = rng.random(num_samples) < fraction
    drawn = _draw_lost(rng, num_samples, len(present), fixed_mask)
    held = _held_mask(present)
    lost = drawn & held
    strippable = hit & (lost != 0) & (held & ~drawn != 0)
    lost = np.where(strippable, lost, 0).astype(np.int64)
    return _strip(present, lost), lost
