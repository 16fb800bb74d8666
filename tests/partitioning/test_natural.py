import numpy as np
import pyarrow as pa
import pytest

from pipelines.errors import CmiError
from pipelines.partitioning.natural import encode_groups, group_column, split_by_group


def _groups(sizes, seed=0):
    codes = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(codes)


def test_encode_groups_sorts_names_and_rejects_missing_groups():
    codes, names = encode_groups(pa.chunked_array([["b", "a"], ["c", "a"]]))
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(codes, [1, 0, 2, 0])
    with pytest.raises(CmiError, match="no group"):
        encode_groups(pa.chunked_array([["a", None]]))
    with pytest.raises(CmiError, match="use --alpha or --iid"):
        encode_groups(pa.chunked_array([pa.array([None, None], pa.string())]))


def test_group_aliases_name_the_group_column():
    assert {group_column(x) for x in ("group", "actor", "Event")} == {"group"}
    with pytest.raises(CmiError, match="actor"):
        group_column("speaker")


def test_one_client_per_group_keeps_the_groups():
    codes = _groups([5, 3, 8])
    client, labels = split_by_group(codes, ["x", "y", "z"], None, seed=0)
    np.testing.assert_array_equal(client, codes)
    assert labels == ["x", "y", "z"]


def test_merging_never_splits_a_group_and_balances_sizes():
    sizes = [40, 35, 30, 22, 20, 18, 15, 9, 5, 3, 2, 1]
    codes = _groups(sizes)
    names = [f"g{i:02d}" for i in range(len(sizes))]
    client, labels = split_by_group(codes, names, 4, seed=0)
    pairs = np.unique(np.stack([codes, client]), axis=1)
    assert len(pairs[0]) == len(sizes)  # each group maps to exactly one client
    loads = np.bincount(client, minlength=4)
    assert (loads > 0).all() and loads.sum() == sum(sizes)
    # greedy size balancing: loads differ by at most the largest group (here: total 200, max 40)
    assert loads.max() - loads.min() <= max(sizes)
    for k, label in enumerate(labels):
        assert sorted(label.split("+")) == [names[g] for g in np.unique(codes[client == k])]
    np.testing.assert_array_equal(client, split_by_group(codes, names, 4, seed=0)[0])


def test_merging_equal_groups_depends_on_seed():
    codes = _groups([10] * 12)
    names = [f"g{i}" for i in range(12)]
    merges = {tuple(split_by_group(codes, names, 3, seed=s)[1]) for s in range(5)}
    assert len(merges) > 1
    for s in range(5):
        assert (np.bincount(split_by_group(codes, names, 3, seed=s)[0]) == 40).all()


def test_more_clients_than_groups_is_an_error():
    with pytest.raises(CmiError, match="--clients 3 or fewer"):
        split_by_group(_groups([2, 2, 2]), ["a", "b", "c"], 4, seed=0)
