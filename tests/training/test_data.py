import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.partitioning import read_partition
from pipelines.shards import read_table, tensor_column
from pipelines.training.data import load_training_data
from tests.factories import make_dataset
from tests.training.helpers import partitioned_workspace


def test_train_pool_is_joined_by_id_with_the_partition(tmp_path):
    ws = partitioned_workspace(tmp_path, clients=5, missing=0.4, absent={"visual": 0.2})
    data = load_training_data(ws)
    parts = read_partition(ws.resolve("partition"))
    table = read_table(ws.resolve("dataset"), split="train")
    by_id = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    rows = np.array([by_id[i] for i in data.train.ids])
    pool = data.train.pool

    assert data.train.ids.tolist() == parts.ids.tolist()
    assert pool.inputs["visual"].dtype == torch.uint8 and pool.inputs["audio"].dtype == torch.float32
    for m in ("audio", "visual"):
        assert np.array_equal(pool.inputs[m].numpy(), tensor_column(table, m)[rows])
        shard_present = table.column(f"{m}_present").to_numpy(zero_copy_only=False)[rows]
        assert np.array_equal(pool.present[m].numpy(), shard_present & parts.available[m])
    assert np.array_equal(pool.labels.numpy(), table.column("label").to_numpy()[rows])
    # clients: disjoint index arrays covering every row, matching the partition's assignment
    indices = np.concatenate([c.indices for c in data.clients])
    assert sorted(indices.tolist()) == list(range(len(data.train)))
    for c in data.clients:
        assert (parts.client[c.indices] == c.cid).all()
        assert c.modalities == tuple(m for m in ("audio", "visual") if parts.client_modalities[m][c.cid])
    assert len(data.splits["val"]) == 18 and len(data.splits["test"]) == 18
    assert data.modalities == ("audio", "visual") and data.classes == ["a", "b", "c"]


def test_rows_the_partition_left_out_are_not_loaded(tmp_path):
    ws = partitioned_workspace(tmp_path, missing=0.0, absent={"audio": 0.5, "visual": 0.5})
    data = load_training_data(ws)
    table = read_table(ws.resolve("dataset"), ["id", "audio_present", "visual_present"], split="train")
    has_any = table.column("audio_present").to_numpy() | table.column("visual_present").to_numpy()
    assert len(data.train) == int(has_any.sum()) < table.num_rows
    pool = data.train.pool
    assert bool((pool.present["audio"] | pool.present["visual"]).all())


def test_a_partition_of_an_older_dataset_version_is_refused(tmp_path):
    ws = partitioned_workspace(tmp_path)
    make_dataset(ws, "toy", per_class={"train": 24, "val": 6, "test": 6}, seed=1)  # re-prepared
    with pytest.raises(CmiError, match="run `cmi partition` again"):
        load_training_data(ws)


def test_missing_partition_names_the_command(tmp_path):
    from pipelines.artifacts import Workspace
    with pytest.raises(CmiError, match="cmi partition"):
        load_training_data(Workspace(tmp_path))
