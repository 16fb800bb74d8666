"""Natural splits: one client per group of the dataset's ``group`` column (CREMA-D actor, AVE /
CrisisMMD event), optionally merged into fewer clients.

Without merging, client k is the k-th group in sorted name order. Merging into N < G clients is a
seeded, size-balanced greedy assignment: the groups are shuffled with the seed, ordered by size
(largest first, ties in shuffled order), and each goes to the client that holds the fewest samples
so far (ties: lowest client index). A group is never split across clients.
"""

from __future__ import annotations

import heapq

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import CmiError
from pipelines.partitioning.streams import stream_rng

GROUP_COLUMN = "group"
#: accepted --by values; all name the shards' ``group`` column (what prepare keeps there:
#: the actor for CREMA-D, the event for AVE / CrisisMMD)
GROUP_ALIASES = ("group", "actor", "event")


def group_column(by: str) -> str:
    """The shard column a ``--by`` value names, or CmiError listing the accepted values."""
    if by.lower() not in GROUP_ALIASES:
        raise CmiError(
            f"--by {by!r} is not a group column; use one of {', '.join(GROUP_ALIASES)} (all name the "
            f"dataset's group column: CREMA-D actor, AVE / CrisisMMD event), or --alpha / --iid."
        )
    return GROUP_COLUMN


def encode_groups(groups: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """(code of every sample into the sorted group names, sorted group names)."""
    if groups.null_count == len(groups):
        raise CmiError(
            "this dataset has no group column values (no actor / event per sample), so --by cannot "
            "split it naturally; use --alpha or --iid."
        )
    if groups.null_count:
        raise CmiError(
            f"{groups.null_count} training samples have no group, so --by cannot place them; "
            "use --alpha or --iid, or re-create the dataset with `cmi prepare ... --force`."
        )
    names = pc.unique(groups).sort()
    codes = pc.index_in(groups, value_set=names)
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64), names.to_pylist()


def split_by_group(
    codes: np.ndarray, names: list[str], num_clients: int | None, seed: int
) -> tuple[np.ndarray, list[str]]:
    """(client of every sample, each client's group label) for a natural split.

    ``num_clients`` None means one client per group; a merged client's label joins its sorted
    group names with ``+``.
    """
    num_groups = len(names)
    if num_clients is None or num_clients == num_groups:
        return codes.astype(np.int32), list(names)
    if num_clients > num_groups:
        raise CmiError(
            f"--clients {num_clients} is more than the {num_groups} groups of the natural split; a "
            f"group is never split, so use --clients {num_groups} or fewer (or --alpha / --iid)."
        )
    sizes = np.bincount(codes, minlength=num_groups)
    shuffled = stream_rng(seed, "merge").permutation(num_groups)
    by_size = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    client_of_group = np.empty(num_groups, dtype=np.int32)
    loads = [(0, k) for k in range(num_clients)]  # already a heap
    for g in by_size:  # one step per group, not per sample
        load, k = heapq.heappop(loads)
        client_of_group[g] = k
        heapq.heappush(loads, (load + int(sizes[g]), k))
    labels = ["+".join(names[g] for g in np.flatnonzero(client_of_group == k)) for k in range(num_clients)]
    return client_of_group[codes], labels
