"""A SuperNode's training data from the memory-mapped cache is the engine's own train data, and
a changed input is never served from a stale cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.engines.flower import node_data
from pipelines.engines.flower.node_data import cache_path, load_node_data, write_train_cache
from pipelines.training.data import load_training_data
from tests.training.helpers import partitioned_workspace


@pytest.fixture
def ws(tmp_path):
    return partitioned_workspace(tmp_path, clients=4, missing=0.4, absent={"visual": 0.2})


def assert_same_train_data(got, want):
    assert (got.dataset.path, got.partition.path, got.specs, got.classes) == \
        (want.dataset.path, want.partition.path, want.specs, want.classes)
    np.testing.assert_array_equal(got.train.ids, want.train.ids)
    np.testing.assert_array_equal(got.train_client, want.train_client)
    for m in want.modalities:
        assert torch.equal(got.train.pool.inputs[m], want.train.pool.inputs[m])
        assert torch.equal(got.train.pool.present[m], want.train.pool.present[m])
    assert torch.equal(got.train.pool.labels, want.train.pool.labels)
    assert [(c.cid, c.indices.tolist(), c.modalities) for c in got.clients] == \
        [(c.cid, c.indices.tolist(), c.modalities) for c in want.clients]
    assert got.splits == {}


def test_cached_train_data_equals_the_loaded_one_and_is_read_without_the_shards(ws, monkeypatch):
    want = load_training_data(ws)
    assert any(not c.modalities == want.modalities for c in want.clients)   # unimodal clients are covered
    directory = write_train_cache(ws, want)
    assert directory.is_relative_to(ws.root / ".cache" / "flower")

    def no_parquet(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(node_data, "load_training_data", no_parquet)
    got = load_node_data(ws, want.partition.name)
    assert_same_train_data(got, want)
    assert isinstance(got.train.pool.inputs["audio"].numpy(), np.ndarray)


def test_a_missing_cache_is_written_by_the_first_reader(ws):
    want = load_training_data(ws)
    assert not cache_path(ws, want.partition, want.dataset).exists()
    assert_same_train_data(load_node_data(ws, want.partition.name), want)
    assert (cache_path(ws, want.partition, want.dataset) / node_data.META).is_file()
    assert [p.name for p in cache_path(ws, want.partition, want.dataset).parent.iterdir()] == \
        [cache_path(ws, want.partition, want.dataset).name]   # no temporary folder left


def test_the_cache_key_follows_the_partition_and_the_dataset(ws, tmp_path):
    data = load_training_data(ws)
    other = partitioned_workspace(tmp_path / "other", clients=4, missing=0.4, absent={"visual": 0.2}, seed=1)
    other_data = load_training_data(other)
    assert other_data.partition.name == data.partition.name
    assert cache_path(ws, data.partition, data.dataset).name != cache_path(ws, other_data.partition,
                                                                           other_data.dataset).name
    assert cache_path(ws, data.partition, data.dataset) != cache_path(ws, data.partition, other_data.dataset)
