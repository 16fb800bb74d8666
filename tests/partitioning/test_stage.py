import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import (
    PARTITION_ASSIGNMENTS, PARTITION_CLIENTS, PARTITION_HEATMAP, PARTITION_STATS, ArtifactError, Workspace,
    file_sha256, load_artifact, write_manifest,
)
from pipelines.errors import CmiError
from pipelines.partitioning import PartitionSettings, partition_samples, read_partition, run_partition
from pipelines.shards import ModalitySpec, read_table
from tests.factories import DEFAULT_SPECS, make_dataset

FILES = (PARTITION_ASSIGNMENTS, PARTITION_CLIENTS, PARTITION_STATS, PARTITION_HEATMAP)


def _train(dataset):
    table = read_table(dataset, ["id", "label", "audio_present", "visual_present"], split="train")
    return {c: table.column(c).to_numpy() for c in table.column_names}


def test_every_train_sample_assigned_once_and_no_val_or_test(tmp_path):
    ws = Workspace(tmp_path)
    dataset = make_dataset(ws, per_class={"train": 30, "val": 7, "test": 6})
    settings = PartitionSettings.from_options(alpha=0.5, clients=5, missing=0.4)
    outcome = run_partition(ws, settings)
    assert outcome.artifact.name == "toy-dir0.5-c5-m0.4-s0" and not outcome.reused
    assert ws.resolve("partition").name == outcome.artifact.name  # became the latest
    data = read_partition(ws.resolve("partition", verify=True))
    train = _train(dataset)
    np.testing.assert_array_equal(data.ids, train["id"].astype(str))  # dataset train order, once each
    assert len(set(data.ids)) == 90
    assert not any(i.startswith(("val-", "test-")) for i in data.ids)
    assert data.num_clients == 5 and data.client.dtype == np.int32
    assert set(np.unique(data.client)) == set(range(5))
    stats = outcome.stats
    np.testing.assert_array_equal(np.bincount(data.client, minlength=5), stats["client_sizes"])
    # class counts in stats.json are the counts of the assigned labels
    counts = np.zeros((5, 3), int)
    np.add.at(counts, (data.client, train["label"]), 1)
    assert counts.tolist() == stats["class_counts"]
    # round(0.4 * 5) = 2 clients hold one modality; their samples all lack it
    one_modality = [k for k in range(5) if not all(data.client_modalities[m][k] for m in ("audio", "visual"))]
    assert len(one_modality) == 2 == stats["missing"]["clients"]
    for k in one_modality:
        lost = stats["missing"]["lost_modality"][k]
        assert not data.available[lost][data.client == k].any()
    clients = pq.read_table(outcome.artifact.file(PARTITION_CLIENTS))
    assert clients.column("n_samples").to_pylist() == stats["client_sizes"]
    assert clients.column("group").null_count == 5
    manifest = outcome.artifact.manifest
    assert manifest["inputs"] == {"dataset": dataset.fingerprint}
    assert (manifest["dataset"], manifest["classes"], manifest["modalities"], manifest["num_clients"]) == (
        "toy", ["a", "b", "c"], ["audio", "visual"], 5)
    assert outcome.artifact.file(PARTITION_HEATMAP).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _checksums(artifact):
    return {f: file_sha256(artifact.file(f)) for f in FILES}


def test_same_seed_same_artifact_bytes_other_seed_differs(tmp_path):
    sums = []
    for ws_name in ("one", "two"):
        ws = Workspace(tmp_path / ws_name)
        make_dataset(ws)
        outcome = run_partition(ws, PartitionSettings.from_options(alpha=0.3, clients=4, missing=0.5))
        sums.append((_checksums(outcome.artifact), outcome.artifact.fingerprint))
    assert sums[0] == sums[1]
    other = run_partition(ws, PartitionSettings.from_options(alpha=0.3, clients=4, missing=0.5, seed=1))
    assert other.artifact.name.endswith("-s1")
    a = pq.read_table(ws.resolve("partition", "toy-dir0.3-c4-m0.5-s0").file(PARTITION_ASSIGNMENTS))
    b = pq.read_table(other.artifact.file(PARTITION_ASSIGNMENTS))
    assert a.column("client").to_pylist() != b.column("client").to_pylist()


def test_rerun_is_a_noop_and_force_rewrites_identically(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws)
    settings = PartitionSettings.from_options(iid=True, clients=6)
    first = run_partition(ws, settings)
    assert first.stats["client_sizes"] == [10] * 6  # IID: 60 train samples, equal sizes
    again = run_partition(ws, settings)
    assert again.reused and again.artifact.manifest["created_at"] == first.artifact.manifest["created_at"]
    assert again.stats == json.loads(json.dumps(first.stats))
    forced = run_partition(ws, settings, force=True)
    assert not forced.reused and _checksums(forced.artifact) == _checksums(first.artifact)
    assert forced.artifact.fingerprint == first.artifact.fingerprint
    # equivalent spellings name the same artifact: --alpha inf is --iid
    assert run_partition(ws, PartitionSettings.from_options(alpha=float("inf"), clients=6)).reused
    # a re-prepared dataset (new fingerprint) makes the same-named partition stale: it is rebuilt
    dataset = make_dataset(ws, seed=1)
    rebuilt = run_partition(ws, settings)
    assert not rebuilt.reused and rebuilt.artifact.manifest["inputs"] == {"dataset": dataset.fingerprint}


def test_natural_split_keeps_groups_whole_and_merges(tmp_path):
    ws = Workspace(tmp_path)
    dataset = make_dataset(ws, groups=5)
    groups = read_table(dataset, ["id", "group"], split="train").column("group").to_numpy()
    per_group = run_partition(ws, PartitionSettings.from_options(by="actor"))
    assert per_group.artifact.name == "toy-by-group-s0" and per_group.artifact.manifest["num_clients"] == 5
    data = read_partition(per_group.artifact)
    for g in np.unique(groups):
        assert len(np.unique(data.client[groups == g])) == 1
    assert per_group.stats["client_groups"] == ["g0", "g1", "g2", "g3", "g4"]
    merged = run_partition(ws, PartitionSettings.from_options(by="event", clients=2))
    data = read_partition(merged.artifact)
    labels = pq.read_table(merged.artifact.file(PARTITION_CLIENTS)).column("group").to_pylist()
    assert sorted(sum((label.split("+") for label in labels), [])) == ["g0", "g1", "g2", "g3", "g4"]
    for k, label in enumerate(labels):
        assert set(groups[data.client == k]) == set(label.split("+"))
    # --clients equal to the group count is the same partition as one client per group
    assert run_partition(ws, PartitionSettings.from_options(by="group", clients=5)).reused


def test_samples_without_any_modality_are_left_out_and_counted(tmp_path):
    ws = Workspace(tmp_path)
    dataset = make_dataset(ws, per_class={"train": 80, "val": 2, "test": 2}, absent={"audio": 0.4, "visual": 0.4})
    train = _train(dataset)
    settings = PartitionSettings.from_options(alpha=1.0, clients=4, missing=0.5, missing_modality="audio")
    outcome = run_partition(ws, settings)
    data = read_partition(outcome.artifact)
    stats = outcome.stats
    nothing = ~train["audio_present"] & ~train["visual_present"]
    assert stats["excluded"]["no_modality_in_shards"] == nothing.sum() > 0
    row = {i: r for r, i in enumerate(train["id"])}
    rows = np.array([row[i] for i in data.ids])
    for m in ("audio", "visual"):
        assert not (data.available[m] & ~train[f"{m}_present"][rows]).any()  # never gains
    assert (data.available["audio"] | data.available["visual"]).all()
    # the 2 audio-losing clients drop their audio-only samples
    losing = np.isin(data.client, [k for k, m in enumerate(stats["missing"]["lost_modality"]) if m == "audio"])
    assert not data.available["audio"][losing].any()
    lost_client = np.array([stats["missing"]["lost_modality"][k] == "audio" for k in range(4)])
    assert lost_client.sum() == 2
    assert len(data.ids) + sum(stats["excluded"].values()) == len(train["id"])
    assert stats["excluded"]["lost_last_modality"] > 0


def test_sample_level_missing_through_the_stage(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, per_class={"train": 400, "val": 1, "test": 1})
    outcome = run_partition(ws, PartitionSettings.from_options(alpha=5.0, clients=3, missing=0.3, missing_level="sample"))
    data = read_partition(outcome.artifact)
    stripped = ~(data.available["audio"] & data.available["visual"])
    # 1,200 multimodal samples, P = 0.3: sd of the share 0.013; bound 5 sd = 0.066
    assert abs(stripped.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 1200)
    assert sum(outcome.stats["missing"]["samples_stripped"].values()) == stripped.sum()
    assert outcome.artifact.name == "toy-dir5-c3-m0.3-sample-s0"


def test_read_partition_validates_the_artifact(tmp_path):
    ws = Workspace(tmp_path)
    dataset = make_dataset(ws)
    with pytest.raises(ArtifactError, match="not a partition"):
        read_partition(dataset)
    outcome = run_partition(ws, PartitionSettings.from_options(clients=3))
    broken = ws.artifact_dir("partition", "broken")
    broken.mkdir()
    for f in FILES:
        (broken / f).write_bytes(outcome.artifact.file(f).read_bytes())
    write_manifest(broken, "partition", {}, extra={**{k: outcome.artifact.manifest[k] for k in (
        "dataset", "classes", "modalities")}, "num_clients": 4})
    with pytest.raises(ArtifactError, match="cmi partition"):
        read_partition(load_artifact(broken, "partition"))


def test_client_too_small_after_losing_single_modality_samples_is_an_error():
    labels = np.zeros(20, dtype=np.int64)
    present = {"audio": np.ones(20, bool), "visual": np.arange(20) >= 10}  # 10 audio-only samples
    settings = PartitionSettings.from_options(iid=True, clients=2, min_samples=8, missing=1.0,
                                              missing_modality="audio")
    with pytest.raises(CmiError, match="10 samples had only the modality their client lost"):
        partition_samples(labels, present, 1, settings)
    result = partition_samples(labels, present, 1, PartitionSettings.from_options(
        iid=True, clients=2, min_samples=4, missing=1.0, missing_modality="audio"))
    assert result.excluded == {"no_modality_in_shards": 0, "lost_last_modality": 10}
    np.testing.assert_array_equal(result.kept, present["visual"])
    assert not result.available["audio"].any() and result.available["visual"].all()


# ----------------------------------------------------------------------------- M modalities

THREE = (*DEFAULT_SPECS, ModalitySpec("gyro", "sequence", (6, 4), "float32"))


def test_two_modality_partitions_are_unchanged_by_lost_sets(tmp_path):
    # the missing summaries written by the version that lost one modality (before lost sets)
    ws = Workspace(tmp_path)
    make_dataset(ws, per_class={"train": 40, "val": 2, "test": 2}, absent={"audio": 0.2, "visual": 0.2})
    expected = {
        "toy-dir0.5-c5-m0.4-s0": ({"alpha": 0.5, "clients": 5, "missing": 0.4}, {
            "level": "client", "fraction": 0.4, "modality": None, "clients": 2,
            "lost_modality": [None, None, "audio", "audio", None]}),
        "toy-dir0.5-c5-m0.4-lose-visual-s0": ({"alpha": 0.5, "clients": 5, "missing": 0.4, "missing_modality": "visual"}, {
            "level": "client", "fraction": 0.4, "modality": "visual", "clients": 2,
            "lost_modality": [None, None, "visual", "visual", None]}),
        "toy-iid-c4-m0.5-sample-s0": ({"iid": True, "clients": 4, "missing": 0.5, "missing_level": "sample"}, {
            "level": "sample", "fraction": 0.5, "modality": None, "samples_stripped": {"audio": 17, "visual": 22}}),
        "toy-iid-c4-m0.5-sample-lose-audio-s0": (
            {"iid": True, "clients": 4, "missing": 0.5, "missing_level": "sample", "missing_modality": ["audio"]},
            {"level": "sample", "fraction": 0.5, "modality": "audio", "samples_stripped": {"audio": 39, "visual": 0}}),
    }
    for name, (options, missing) in expected.items():
        outcome = run_partition(ws, PartitionSettings.from_options(**options))
        assert outcome.artifact.name == name
        assert outcome.stats["missing"] == missing
        assert outcome.artifact.params["missing_modality"] == missing["modality"]  # one name stays a string
        assert "lost_sets" not in outcome.stats["missing"]
        assert outcome.stats["description"].endswith(f"miss {missing['modality'] or 'a modality'}")


def test_three_modalities_client_level(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, specs=THREE, per_class={"train": 30, "val": 2, "test": 2})
    outcome = run_partition(ws, PartitionSettings.from_options(alpha=1.0, clients=6, missing=0.5, seed=2))
    assert outcome.artifact.name == "toy-dir1-c6-m0.5-s2"
    data = read_partition(outcome.artifact)
    stats, modalities = outcome.stats, ["audio", "visual", "gyro"]
    assert stats["modalities"] == modalities and stats["missing"]["clients"] == 3
    assert stats["description"].endswith("50% of clients miss one or more modalities")
    labels = stats["missing"]["lost_modality"]
    assert sum(label is not None for label in labels) == 3
    for k, label in enumerate(labels):
        lost = set(label.split("+")) if label else set()
        assert lost != set(modalities)
        rows = data.client == k
        for m in modalities:
            # every sample has every modality in the shards: a client holds exactly what it did not lose
            assert data.available[m][rows].all() == (m not in lost) == bool(data.client_modalities[m][k])
            assert stats["modality_counts"][m][k] == (0 if m in lost else rows.sum())
        assert stats["multimodal_counts"][k] == (0 if lost else rows.sum())
    assert stats["excluded"] == {"no_modality_in_shards": 0, "lost_last_modality": 0}
    clients = pq.read_table(outcome.artifact.file(PARTITION_CLIENTS))
    assert [c for c in clients.column_names if c in modalities] == modalities


def test_three_modalities_a_fixed_set_names_the_artifact_and_is_reused(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, specs=THREE)
    settings = PartitionSettings.from_options(clients=4, missing=0.5, missing_modality=["gyro", "audio"])
    outcome = run_partition(ws, settings)
    # manifest order, whatever order the names were given in
    assert outcome.artifact.name == "toy-dir0.5-c4-m0.5-lose-audio+gyro-s0"
    assert outcome.artifact.params["missing_modality"] == ["audio", "gyro"]
    assert outcome.stats["missing"]["modality"] == ["audio", "gyro"]
    assert outcome.stats["missing"]["lost_modality"].count("audio+gyro") == 2
    assert outcome.stats["description"].endswith("50% of clients miss audio+gyro")
    data = read_partition(outcome.artifact)
    losing = np.isin(data.client, [k for k, m in enumerate(outcome.stats["missing"]["lost_modality"]) if m])
    assert not (data.available["audio"] | data.available["gyro"])[losing].any()
    assert data.available["visual"].all()
    # the same set spelled with commas (or repeated, in another order) is the same partition
    for spelling in ("audio,gyro", ["gyro", "audio,gyro"]):
        again = run_partition(ws, PartitionSettings.from_options(clients=4, missing=0.5, missing_modality=spelling))
        assert again.reused and again.artifact.name == outcome.artifact.name
    with pytest.raises(CmiError, match="would leave nothing"):
        run_partition(ws, PartitionSettings.from_options(clients=4, missing=0.5,
                                                         missing_modality="audio,visual,gyro"))
    with pytest.raises(CmiError, match="'depth' is not a modality"):
        run_partition(ws, PartitionSettings.from_options(clients=4, missing=0.5, missing_modality="audio,depth"))


def test_three_modalities_sample_level_counts_sets_and_modalities(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, specs=THREE, per_class={"train": 400, "val": 1, "test": 1})
    outcome = run_partition(ws, PartitionSettings.from_options(iid=True, clients=3, missing=0.6, missing_level="sample"))
    data = read_partition(outcome.artifact)
    missing = outcome.stats["missing"]
    modalities = ["audio", "visual", "gyro"]
    lacking = {m: ~data.available[m] for m in modalities}
    assert missing["samples_stripped"] == {m: int(lacking[m].sum()) for m in modalities}
    assert list(missing["lost_sets"]) == ["audio", "visual", "audio+visual", "gyro", "audio+gyro", "visual+gyro"]
    stripped = np.logical_or.reduce(list(lacking.values()))
    assert sum(missing["lost_sets"].values()) == stripped.sum()
    for label, count in missing["lost_sets"].items():
        lost = set(label.split("+"))
        assert count == np.logical_and.reduce([lacking[m] == (m in lost) for m in modalities]).sum()
    assert np.logical_or.reduce([data.available[m] for m in modalities]).all()
    # 1,200 samples, P = 0.6: sd of the share 0.014; bound 5 sd
    assert abs(stripped.mean() - 0.6) < 5 * np.sqrt(0.6 * 0.4 / 1200)
