import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pipelines.artifacts import eval_paths
from pipelines.engines.local import run as run_local
from pipelines.errors import CmiError
from pipelines.partitioning import read_partition
from pipelines.reports.metrics import path_metrics
from pipelines.training.progress import QuietProgress
from pipelines.training.rounds import TrainingDiverged
from pipelines.training.session import open_session
from tests.training.helpers import partitioned_workspace, quick_config

PATHS = eval_paths(["audio", "visual"])
METRIC_KEYS = {"round", "time_s", "clients", "failed_clients", "train_loss", "temperatures", "val", "test",
               "client_accuracy"}
SPLIT_KEYS = {"accuracy", "per_class_recall", "macro_f1", "imbalance_ratio"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("engine"), clients=6, missing=0.3)


def train(ws, name=None, **overrides):
    session = open_session(ws, quick_config(**overrides), name=name)
    run_local(session, QuietProgress())
    return session


def without_time(lines):
    return [{k: v for k, v in line.items() if k != "time_s"} for line in lines]


def test_run_directory_holds_manifest_config_metrics_predictions_and_checkpoints(ws):
    s = train(ws, method="fedcmi")
    m = s.run.artifact().manifest
    assert m["status"] == "complete" and m["rounds_done"] == 3 and m["rounds_total"] == 3
    assert m["method"] == "fedcmi" and m["engine"] == "local" and m["dataset"] == "toy"
    assert m["partition"] == ws.resolve("partition").name
    assert m["classes"] == ["a", "b", "c"] and m["modalities"] == ["audio", "visual"] and m["eval_paths"] == PATHS
    assert m["inputs"] == {"dataset": ws.resolve("dataset").fingerprint, "partition": ws.resolve("partition").fingerprint}
    assert m["params"] == s.config.to_dict() == json.loads((s.run.path / "config.json").read_text())
    assert s.run.name.startswith(f"fedcmi-{m['dataset']}-s0-")
    assert ws.latest_name("run") == s.run.name

    lines = s.run.read_metrics()
    assert [line["round"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert set(line) == METRIC_KEYS
        assert line["failed_clients"] == [] and len(line["clients"]) == 3 and line["clients"] == sorted(line["clients"])
        assert line["time_s"] > 0 and line["train_loss"] > 0
        for split in ("val", "test"):
            block = line[split]
            assert set(block) == SPLIT_KEYS
            assert set(block["accuracy"]) == set(PATHS) == set(block["macro_f1"]) == set(block["per_class_recall"])
            assert all(len(r) == 3 for r in block["per_class_recall"].values())
            assert block["imbalance_ratio"] > 0
        assert set(line["client_accuracy"]) == {"mean", "std", "worst10"}
    # warm-up round 1 has no infiltration, hence no temperatures; then T_c in (0, 1]
    assert lines[0]["temperatures"] is None
    for line in lines[1:]:
        assert len(line["temperatures"]) == 3 and all(0 < t <= 1 for t in line["temperatures"])

    pred_dir = s.run.path / "predictions"
    final = pq.read_table(pred_dir / "test-final.parquet")
    assert final.column_names == ["id", "label", *(f"pred_{p}" for p in PATHS)]
    assert final.schema.metadata[b"round"] == b"3" and final.num_rows == 18
    assert final.column("id").to_pylist() == s.data.splits["test"].ids.tolist()
    labels = final.column("label").to_numpy()
    for p in PATHS:  # the logged accuracy is the one of the saved predictions
        assert path_metrics(labels, final.column(f"pred_{p}").to_numpy(), 3).accuracy == pytest.approx(
            lines[-1]["test"]["accuracy"][p])
    best = pq.read_table(pred_dir / "test-best.parquet")
    assert int(best.schema.metadata[b"round"]) == m["best_round"] == s.best_round
    best_val = lines[m["best_round"] - 1]["val"]["accuracy"]["fused"]
    assert best_val == max(line["val"]["accuracy"]["fused"] for line in lines)
    clients = pq.read_table(pred_dir / "clients-final.parquet")
    assert clients.column_names == ["id", "client", "label", "pred"]
    part = read_partition(ws.resolve("partition"))
    assert clients.column("id").to_pylist() == part.ids.tolist()
    assert clients.column("client").to_numpy().tolist() == part.client.tolist()

    last = load_file(str(s.run.checkpoint_file))
    assert set(last) == {f"global/{k}" for k in s.global_state}
    best_weights = load_file(str(s.run.path / "checkpoints" / "best.safetensors"))
    assert set(best_weights) == set(s.global_state)


def test_eval_every_logs_every_nth_and_the_last_round(ws):
    s = train(ws, method="fedavg", rounds=5, eval_every=2)
    assert [line["round"] for line in s.run.read_metrics()] == [2, 4, 5]
    assert s.run.artifact().manifest["rounds_done"] == 5


def test_eval_train_every_evaluates_the_training_pool_on_its_rounds_the_last_and_new_bests(ws):
    every = train(ws, name="train-eval-every", method="fedavg", rounds=7)
    sparse = train(ws, name="train-eval-sparse", method="fedavg", rounds=7, eval_train_every=3)
    best_so_far, expected = None, []
    for line in every.run.read_metrics():
        score = line["val"]["accuracy"]["fused"]
        new_best = best_so_far is None or score > best_so_far
        best_so_far = score if new_best else best_so_far
        expected.append(line["round"] % 3 == 0 or line["round"] == 7 or new_best)
    assert not all(expected)   # the case arises: some rounds skip the training pool
    for full, line, due in zip(every.run.read_metrics(), sparse.run.read_metrics(), expected):
        assert line["client_accuracy"] == (full["client_accuracy"] if due else None)
        assert {k: v for k, v in line.items() if k not in ("time_s", "client_accuracy")} == \
            {k: v for k, v in full.items() if k not in ("time_s", "client_accuracy")}
    for name in ("clients-best", "clients-final", "test-best"):
        a = pq.read_table(every.run.path / "predictions" / f"{name}.parquet")
        b = pq.read_table(sparse.run.path / "predictions" / f"{name}.parquet")
        assert a.equals(b) and a.schema.metadata == b.schema.metadata


def test_same_seed_same_metrics_and_weights(ws):
    a = train(ws, name="det-a", method="fedcmi")
    b = train(ws, name="det-b", method="fedcmi")
    assert without_time(a.run.read_metrics()) == without_time(b.run.read_metrics())
    wa, wb = load_file(str(a.run.checkpoint_file)), load_file(str(b.run.checkpoint_file))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(ws, name="det-c", method="fedcmi", seed=1)
    assert without_time(c.run.read_metrics()) != without_time(a.run.read_metrics())


def test_local_method_evaluates_every_client_model(ws):
    s = train(ws, method="local")
    k, n_test = len(s.clients), len(s.data.splits["test"])
    final = pq.read_table(s.run.path / "predictions" / "test-final.parquet")
    assert final.num_rows == k * n_test
    assert final.column("model").to_numpy().tolist() == np.repeat(np.arange(k), n_test).tolist()
    sampled = sorted({c for line in s.run.read_metrics() for c in line["clients"]})
    ckpt = s.run.load_checkpoint()
    assert sorted(ckpt.clients) == sampled == sorted(s.client_states.keys())
    initial = s._initial_model().state_dict()
    assert all(torch.equal(ckpt.global_state[key], initial[key]) for key in initial)
    # the logged accuracy is the mean over client models
    labels = final.column("label").to_numpy()
    per_model = [path_metrics(labels[i * n_test:(i + 1) * n_test],
                              final.column("pred_fused").to_numpy()[i * n_test:(i + 1) * n_test], 3).accuracy
                 for i in range(k)]
    assert s.run.read_metrics()[-1]["test"]["accuracy"]["fused"] == pytest.approx(np.mean(per_model))
    clients = pq.read_table(s.run.path / "predictions" / "clients-final.parquet")
    assert clients.num_rows == len(s.data.train)


def test_centralized_trains_one_pooled_client_on_all_rows(ws):
    s = train(ws, method="centralized", rounds=2)
    assert [line["clients"] for line in s.run.read_metrics()] == [[0], [0]]
    assert len(s.clients) == 1 and len(s.clients[0].indices) == len(s.data.train)
    update = s.method.client_update(s.global_state, s.data.train.pool, s.clients[0], 2, 0)
    assert update.num_samples == len(s.data.train)


def test_unimodal_skips_clients_without_its_modality(ws):
    part = read_partition(ws.resolve("partition"))
    lost = [m for m in ("audio", "visual") if not part.client_modalities[m].all()]
    assert lost, "the partition should have a client that lacks a modality"
    modality = lost[0]
    s = train(ws, method="unimodal", rounds=4, clients_per_round=6, **{"unimodal.modality": modality})
    without = [c.cid for c in s.clients if modality not in c.modalities]
    assert without
    for line in s.run.read_metrics():
        assert line["clients"] == sorted(set(range(6)) - set(without))
        assert line["test"]["accuracy"][f"{modality}_self"] is not None
        assert all(line["test"]["accuracy"][p] is None for p in PATHS if p != f"{modality}_self")
        assert line["test"]["imbalance_ratio"] is None and line["temperatures"] is None
    assert s.selection == f"{modality}_self"


def test_unimodal_without_modality_is_a_user_error(ws):
    with pytest.raises(CmiError, match="modality"):
        open_session(ws, quick_config(method="unimodal"))


def test_too_many_clients_per_round_is_a_user_error(ws):
    with pytest.raises(CmiError, match="--clients-per-round"):
        open_session(ws, quick_config(clients_per_round=7))


def test_nan_loss_stops_naming_round_and_client_and_keeps_the_last_checkpoint(ws, monkeypatch):
    s = open_session(ws, quick_config(method="fedavg", rounds=4), name="nan-run")
    real = s.method.client_update

    def poisoned(global_state, pool, client, round_idx, seed, client_state=None, **plan):
        update = real(global_state, pool, client, round_idx, seed, client_state, **plan)
        if round_idx == 2:  # the third round
            update.metrics["loss"] = float("nan")
        return update

    monkeypatch.setattr(s.method, "client_update", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        run_local(s, QuietProgress())
    first = s.plan_round(3)[0]
    assert f"round 3: client {first} has a non-finite local loss" in str(err.value)
    assert "round 2) is kept" in str(err.value)
    m = s.run.artifact().manifest
    assert m["status"] == "diverged" and m["rounds_done"] == 2
    assert s.run.load_checkpoint().round == 2
    assert [line["round"] for line in s.run.read_metrics()] == [1, 2]


def test_a_huge_learning_rate_diverges_with_a_clear_error(ws):
    s = open_session(ws, quick_config(method="fedavg", **{"train.lr": 1e6}), name="lr-run")
    with pytest.raises(TrainingDiverged, match=r"training diverged in round \d+: client \d+"):
        run_local(s, QuietProgress())
    assert s.run.artifact().manifest["status"] == "diverged"


def test_same_command_continues_other_settings_need_force(ws):
    s = train(ws, name="again", method="fedavg", rounds=2)
    again = open_session(ws, quick_config(method="fedavg", rounds=2), name="again")
    assert again.finished and again.rounds_done == 2
    with pytest.raises(CmiError, match="--force"):
        open_session(ws, quick_config(method="fedavg", rounds=3), name="again")
    fresh = open_session(ws, quick_config(method="fedavg", rounds=3), name="again", force=True)
    assert fresh.rounds_done == 0 and not (s.run.path / "metrics.jsonl").exists()


def test_an_engine_can_drive_rounds_itself_and_report_lost_clients(ws):
    """The pieces a Flower ServerApp calls: plan, train each client (elsewhere), finish."""
    import time
    s = open_session(ws, quick_config(method="fedavg", rounds=1), name="by-hand")
    planned = s.plan_round(1)
    updates = [s.client_update(1, cid) for cid in planned[1:]]
    result = s.finish_round(1, updates, time.perf_counter(), failed=planned[:1])
    assert result.clients == planned[1:] and result.record["failed_clients"] == planned[:1]
    assert s.run.read_metrics()[0]["failed_clients"] == planned[:1]
    assert s.run.load_checkpoint().round == 1
