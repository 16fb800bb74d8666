import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from pipelines.artifacts import ArtifactError
from pipelines.training.run_dir import Checkpoint, RunDirectory


def test_checkpoint_round_trip_with_client_states(tmp_path):
    run = RunDirectory(tmp_path / "run")
    g = {"a.weight": torch.randn(3, 2), "a.bn.num_batches_tracked": torch.tensor(5)}
    clients = {3: {"a.weight": torch.randn(3, 2)}, 11: {"a.weight": torch.zeros(3, 2)}}
    assert run.load_checkpoint() is None
    store = run.client_states()
    digests = {cid: store.put(cid, state) for cid, state in clients.items()}
    run.save_checkpoint(Checkpoint(4, g, digests, best_round=2, best_score=0.75, identity="abc"))
    back = run.load_checkpoint()
    assert (back.round, back.best_round, back.best_score, back.identity) == (4, 2, 0.75, "abc")
    assert set(back.global_state) == set(g) and all(torch.equal(back.global_state[k], g[k]) for k in g)
    assert back.clients == digests
    restored = run.client_states()
    restored.reset(back.clients)
    assert set(restored.keys()) == {3, 11}
    assert all(torch.equal(restored[c]["a.weight"], clients[c]["a.weight"]) for c in clients)
    assert not list(run.checkpoint_file.parent.rglob(".tmp-*"))


def test_client_states_are_content_addressed_and_unreferenced_files_are_deleted(tmp_path):
    run = RunDirectory(tmp_path / "run")
    store = run.client_states()
    same = {"w": torch.ones(2)}
    first = store.put(1, same)
    assert store.put(2, {"w": torch.ones(2)}) == first          # equal content: one file
    assert store.file(first).name == f"{first}.safetensors"
    assert hashlib.sha256(store.file(first).read_bytes()).hexdigest() == first
    assert len(list(store.directory.iterdir())) == 1
    changed = store.put(1, {"w": torch.zeros(2)})
    run.save_checkpoint(Checkpoint(1, {"g": torch.zeros(1)}, dict(store.digests)))
    assert sorted(p.stem for p in store.directory.iterdir()) == sorted({first, changed})
    store.put(2, {"w": torch.full((2,), 3.0)})                 # client 2's old state is no longer referenced
    run.save_checkpoint(Checkpoint(2, {"g": torch.zeros(1)}, dict(store.digests)))
    assert sorted(p.stem for p in store.directory.iterdir()) == sorted(store.digests.values())
    assert first not in store.digests.values() and not store.file(first).exists()
    store.file(changed).unlink()                                # a damaged run directory
    with pytest.raises(ArtifactError, match=r"clients \[1\] are missing"):
        run.client_states().reset(run.load_checkpoint().clients)


def test_a_checkpoint_with_inline_client_states_is_read(tmp_path):
    """The layout of cmi before content-addressed client files: client/<cid>/<key> tensors."""
    run = RunDirectory(tmp_path / "run")
    state = {"w": torch.randn(4)}
    meta = {"round": 3, "best_round": 1, "best_score": None, "identity": "x", "clients": [7]}
    run.checkpoint_file.parent.mkdir(parents=True)
    save_file({"global/w": torch.zeros(4), "client/7/w": state["w"]}, str(run.checkpoint_file),
              metadata={"cmi_state": json.dumps(meta)})
    back = run.load_checkpoint()
    store = run.client_states()
    store.reset(back.clients)
    assert back.round == 3 and list(back.clients) == [7] and torch.equal(store[7]["w"], state["w"])


def test_truncate_metrics_keeps_earlier_rounds_and_drops_a_cut_line(tmp_path):
    run = RunDirectory(tmp_path)
    for r in (1, 2, 3):
        run.append_metrics({"round": r, "x": r * 1.5})
    with open(run.metrics_file, "a") as fh:
        fh.write('{"round": 4, "x"')  # a kill in mid-write
    run.truncate_metrics(2)
    assert run.read_metrics() == [{"round": 1, "x": 1.5}, {"round": 2, "x": 3.0}]


def test_prediction_files_columns_and_round_metadata(tmp_path):
    run = RunDirectory(tmp_path)
    ids = np.array(["a", "b"])
    path = run.write_test_predictions("best", ids, np.array([1, 0]), {"fused": np.array([1, -1])}, 7,
                                      models=np.array([0, 0]))
    table = pq.read_table(path)
    assert table.column_names == ["id", "label", "pred_fused", "model"]
    assert str(table.schema.field("pred_fused").type) == "int32"
    assert table.schema.metadata[b"round"] == b"7"
    assert table.column("pred_fused").to_pylist() == [1, -1]
    path = run.write_client_predictions("final", ids, np.array([2, 5]), np.array([1, 0]), np.array([1, 1]), 9)
    table = pq.read_table(path)
    assert table.column_names == ["id", "client", "label", "pred"]
    assert json.loads(table.schema.metadata[b"round"]) == 9
