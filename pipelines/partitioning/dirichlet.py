"""Label-skewed (per-class Dirichlet) and IID splits of the training samples over clients.

The Dirichlet split is the one of the federated-learning literature (the ``partition_data``
"dirichlet"/"noniid-labeldir" code reused by FedMultimodal and most FL benchmarks): for each class
in index order, client shares are drawn from Dirichlet(alpha); clients that already hold at least
their fair share N/K get share 0 (the balancing cap) and the shares are renormalised; the class's
samples are then cut at ``floor(cumsum(shares) * n_class)`` (leftovers of the rounding go to the last
open client; the reference code hands them to the last client even when it is capped). If some client ends with fewer than
``min_samples`` samples the whole draw is repeated with a new derived seed, a bounded number of times.

Only the (classes x clients) count matrix is drawn per attempt; samples are assigned once, with
array operations (no per-sample Python loop).
"""

from __future__ import annotations

import numpy as np

from pipelines.errors import CmiError
from pipelines.partitioning.streams import stream_rng

#: Dirichlet draws tried before giving up on --min-samples.
MAX_ATTEMPTS = 100


def capped_dirichlet_counts(
    class_sizes: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(classes, clients) sample counts of one capped Dirichlet draw; row c sums to class_sizes[c]."""
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    fair_share = class_sizes.sum() / num_clients
    held = np.zeros(num_clients, dtype=np.int64)
    counts = np.zeros((len(class_sizes), num_clients), dtype=np.int64)
    concentration = np.full(num_clients, alpha, dtype=np.float64)
    for c, n_class in enumerate(class_sizes):
        shares = rng.dirichlet(concentration)
        open_clients = held < fair_share  # never all False: the classes left are not yet held
        shares[~open_clients] = 0.0
        total = shares.sum()
        if total <= 0.0:  # tiny alpha: every open client drew an underflowed 0; share evenly
            shares, total = open_clients.astype(np.float64), float(open_clients.sum())
        cuts = np.minimum((np.cumsum(shares / total) * n_class).astype(np.int64)[:-1], n_class)
        # rounding leftovers go to the last open client, not to a capped one after it (the
        # literature's code gives them to the last client even when it is capped)
        cuts[np.flatnonzero(open_clients)[-1]:] = n_class
        counts[c] = np.diff(cuts, prepend=0, append=n_class)
        held += counts[c]
    return counts


def assign_by_counts(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Client of every sample such that client k gets ``counts[c, k]`` random samples of class c."""
    num_classes, num_clients = counts.shape
    # radix sort (O(n)) applies to 16-bit keys; a stable sort keeps dataset order within a class
    key = labels.astype(np.int16) if num_classes <= np.iinfo(np.int16).max else labels
    order = np.argsort(key, kind="stable")
    slots = np.repeat(np.tile(np.arange(num_clients, dtype=np.int32), num_classes), counts.ravel())
    for class_slots in np.split(slots, np.cumsum(counts.sum(axis=1))[:-1]):
        rng.shuffle(class_slots)  # a view: shuffles this class's client slots in place
    client = np.empty(len(labels), dtype=np.int32)
    client[order] = slots
    return client


def split_dirichlet(
    labels: np.ndarray, num_classes: int, num_clients: int, alpha: float, min_samples: int, seed: int
) -> np.ndarray:
    """Client (int32) of every sample under the capped per-class Dirichlet(alpha) split.

    Raises CmiError when no draw in :data:`MAX_ATTEMPTS` gives every client ``min_samples``.
    """
    class_sizes = np.bincount(labels, minlength=num_classes)
    smallest = 0
    for attempt in range(MAX_ATTEMPTS):
        rng = stream_rng(seed, "split", attempt)
        counts = capped_dirichlet_counts(class_sizes, num_clients, alpha, rng)
        client_sizes = counts.sum(axis=0)
        if client_sizes.min() >= min_samples:
            return assign_by_counts(labels, counts, rng)
        smallest = max(smallest, int(client_sizes.min()))
    raise CmiError(
        f"--alpha {alpha:g} with {num_clients} clients left some client with fewer than "
        f"--min-samples {min_samples} training samples in all {MAX_ATTEMPTS} draws (best draw: "
        f"{smallest}); raise --alpha, lower --clients or lower --min-samples."
    )


def split_iid(num_samples: int, num_clients: int, seed: int) -> np.ndarray:
    """Client (int32) of every sample under a uniform random split: sizes differ by at most one."""
    client = np.empty(num_samples, dtype=np.int32)
    client[stream_rng(seed, "split").permutation(num_samples)] = np.arange(num_samples) % num_clients
    return client
