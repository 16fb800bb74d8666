import json

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.training.run_dir import Checkpoint, RunDirectory


def test_checkpoint_round_trip_with_client_states(tmp_path):
    run = RunDirectory(tmp_path / "run")
    g = {"a.weight": torch.randn(3, 2), "a.bn.num_batches_tracked": torch.tensor(5)}
    clients = {3: {"a.weight": torch.randn(3, 2)}, 11: {"a.weight": torch.zeros(3, 2)}}
    assert run.load_checkpoint() is None
    run.save_checkpoint(Checkpoint(4, g, clients, best_round=2, best_score=0.75, identity="abc"))
    back = run.load_checkpoint()
    assert (back.round, back.best_round, back.best_score, back.identity) == (4, 2, 0.75, "abc")
    assert set(back.global_state) == set(g) and all(torch.equal(back.global_state[k], g[k]) for k in g)
    assert set(back.client_states) == {3, 11}
    assert all(torch.equal(back.client_states[c]["a.weight"], clients[c]["a.weight"]) for c in clients)
    assert not list(run.checkpoint_file.parent.glob(".tmp-*"))


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
