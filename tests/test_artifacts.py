import json

import numpy as np
import pytest

from pipelines.artifacts import (
    ArtifactError, Workspace, atomic_path, eval_paths, load_artifact, update_manifest, write_manifest,
)
from pipelines.shards import modality_specs, read_table, tensor_column
from tests.factories import make_dataset


def test_manifest_roundtrip_and_fingerprint_is_stable(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    (d / "x.bin").write_bytes(b"hello")
    m1 = write_manifest(d, "partition", {"alpha": 0.5}, inputs={"dataset": "f00"}, files=["x.bin"])
    m2 = write_manifest(d, "partition", {"alpha": 0.5}, inputs={"dataset": "f00"}, files=["x.bin"])
    assert m1["fingerprint"] == m2["fingerprint"]
    assert m1["checksums"]["x.bin"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    art = load_artifact(d, "partition", verify=True)
    assert art.params == {"alpha": 0.5}
    (d / "x.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(d, "partition", verify=True)


def test_wrong_kind_version_and_missing_name_the_producer(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(ArtifactError, match="cmi prepare"):
        ws.resolve("dataset")
    with pytest.raises(ArtifactError, match="cmi partition"):
        ws.resolve("partition")
    d = ws.artifact_dir("partition", "p")
    d.mkdir(parents=True)
    with pytest.raises(ArtifactError, match="interrupted"):
        load_artifact(d, "partition")
    write_manifest(d, "dataset", {})
    with pytest.raises(ArtifactError, match="not a partition"):
        load_artifact(d, "partition")
    m = json.loads((d / "manifest.json").read_text())
    m["kind"], m["schema_version"] = "partition", 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema version 99"):
        load_artifact(d, "partition")


def test_update_manifest_keeps_reserved_fields(tmp_path):
    write_manifest(tmp_path, "run", {"lr": 0.1}, extra={"status": "running"})
    m = update_manifest(tmp_path, status="complete")
    assert m["status"] == "complete" and m["params"] == {"lr": 0.1}
    with pytest.raises(ValueError):
        update_manifest(tmp_path, params={})


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_latest_resolution_and_shard_readback(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, "first")
    art = make_dataset(ws, "second", absent={"visual": 0.5})
    assert ws.resolve("dataset").name == "second"
    assert ws.resolve("dataset", "first").name == "first"
    with pytest.raises(ArtifactError, match="known: first, second"):
        ws.resolve("dataset", "third")
    train = read_table(art, split="train")
    assert train.num_rows == 60 and set(train.column("split").to_pylist()) == {"train"}
    specs = modality_specs(art)
    vis = tensor_column(train, "visual")
    assert vis.shape == (60, *specs[1].shape) and vis.dtype == np.uint8
    absent = ~np.asarray(train.column("visual_present"))
    assert absent.any() and not vis[absent].any()


def test_eval_paths_order():
    assert eval_paths(["audio", "visual"]) == ["fused", "audio_only", "visual_only", "audio_self", "visual_self"]
