"""Report numbers recomputed from the toy runs: single run, local method, comparison, unfinished
and invalid runs."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import ArtifactError, Workspace, update_manifest
from pipelines.errors import CmiError
from pipelines.reports.analysis import Key, build_report
from pipelines.reports.tables import build_tables, snapshot_title
from tests.reports.conftest import LABELS, TEMPERATURES, fedavg_spec
from tests.reports.runs import Predictions, RunSpec, write_run


def _summary(report, run, snapshot, path, metric):
    return report.value(report.runs[run], snapshot, Key("summary", path=path, metric=metric))


def test_latest_run_is_reported_with_rounds_from_the_parquet_metadata(toy):
    report = build_report(toy.ws, [])
    assert [r.name for r in report.runs] == ["fedcmi"]  # written last
    report = build_report(toy.ws, ["fedavg"])
    snaps = report.runs[0].snapshots
    assert (snaps["best"].round, snaps["final"].round) == (3, 4)
    assert snaps["final"].file == "predictions/test-final.parquet"


def test_single_run_numbers_match_hand_computation(toy):
    report = build_report(toy.ws, ["fedavg"])
    run = report.runs[0]
    v = lambda key: report.value(run, "final", key)  # noqa: E731
    assert [v(Key("per_class", cls=c, metric="support")) for c in "abc"] == [4, 3, 3]
    fused = [v(Key("per_class", path="fused", cls=c, metric="recall")) for c in "abc"]
    assert fused == pytest.approx([1, 2 / 3, 1 / 2])
    assert [v(Key("per_class", path="visual_self", cls=c, metric="recall")) for c in "abc"] == pytest.approx(
        [1 / 2, 1, 1 / 3])
    assert _summary(report, 0, "final", "fused", "accuracy") == pytest.approx(7 / 9)
    assert _summary(report, 0, "final", "fused", "macro_f1") == pytest.approx((8 / 9 + 2 / 3 + 2 / 3) / 3)
    assert _summary(report, 0, "final", "fused", "worst_class") == "c"
    assert _summary(report, 0, "final", "visual_only", "accuracy") == pytest.approx(0.8)
    assert _summary(report, 0, "final", "visual_only", "coverage") == pytest.approx(1.0)
    assert _summary(report, 0, "final", "audio_only", "fused_minus_path") == pytest.approx(-1 / 9)
    assert math.isnan(_summary(report, 0, "final", "fused", "fused_minus_path"))
    # best snapshot: fused right on every defined row
    assert _summary(report, 0, "best", "fused", "accuracy") == pytest.approx(1.0)
    # fedavg logs no temperatures
    assert not any(k.metric == "temperature" for k in run.snapshots["final"].values)


def test_client_statistics_and_modality_groups(toy):
    report = build_report(toy.ws, ["fedavg"])
    v = lambda key: report.value(report.runs[0], "final", key)  # noqa: E731
    assert v(Key("clients", metric="worst10_mean")) == pytest.approx((1 / 5 + 1 / 4) / 2)
    assert v(Key("clients", metric="mean")) == pytest.approx(
        (1 + 1 / 2 + 1 / 4 + 1 + 1 / 5 + 3 / 4 + 1 + 2 / 3 + 1 + 1 / 2 + 1 / 2 + 4 / 5) / 12)
    assert v(Key("per_client", client="4", metric="accuracy")) == pytest.approx(1 / 5)
    assert v(Key("per_client", client="4", metric="modalities")) == "audio+visual"
    assert v(Key("per_client", client="9", metric="modalities")) == "audio"
    assert v(Key("per_client", client="10", metric="modalities")) == "visual"
    assert v(Key("clients", client="audio", metric="mean")) == pytest.approx((1 + 1 / 2) / 2)
    assert v(Key("clients", client="visual", metric="mean")) == pytest.approx((1 / 2 + 4 / 5) / 2)
    assert v(Key("clients", client="audio+visual", metric="clients")) == 8


def test_fedcmi_temperature_comes_from_the_snapshot_round(toy):
    report = build_report(toy.ws, ["fedcmi"], snapshots=("final",))
    values = report.runs[0].snapshots["final"].values
    assert [values[Key("per_class", cls=c, metric="temperature")] for c in "abc"] == pytest.approx(TEMPERATURES)
    assert list(report.runs[0].snapshots) == ["final"]


def test_local_method_pools_client_models(tmp_path):
    ws = Workspace(tmp_path)
    # two client models, each evaluated on the same 4 test samples
    preds = [0, 0, 1, 0, 0, 1, 1, 1]
    spec = RunSpec(method="local", modalities=["audio"], partition=None,
                   test={"final": Predictions(2, [0, 0, 1, 1] * 2, {"fused": preds, "audio_only": preds,
                                                                     "audio_self": preds},
                                              ids=["t0", "t1", "t2", "t3"] * 2, model=[0] * 4 + [1] * 4)})
    write_run(ws, "local", spec)
    report = build_report(ws, [])
    snap = report.runs[0].snapshots["final"]
    assert snap.models == 2
    assert [snap.values[Key("per_class", cls=c, metric="support")] for c in "ab"] == [2, 2]  # samples, not rows
    # model 0 recalls (1, 1/2), model 1 (1/2, 1): pooled = their mean
    recall = [snap.values[Key("per_class", path="fused", cls=c, metric="recall")] for c in "ab"]
    assert recall == pytest.approx([3 / 4, 3 / 4])
    assert "pooled over 2 client models" in build_tables(report, per_class=True, per_client=False)[1].note
    assert any("no partition" in n for n in report.runs[0].run.notes)


def test_compare_deltas_are_other_minus_baseline(toy):
    report = build_report(toy.ws, ["fedavg", "fedcmi"], compare=True)
    base, other = report.runs
    assert report.baseline is base
    d = lambda key, snap="final": report.delta(other, snap, key)  # noqa: E731
    assert d(Key("summary", path="fused", metric="accuracy")) == pytest.approx(8 / 9 - 7 / 9)
    assert d(Key("summary", path="visual_only", metric="accuracy")) == pytest.approx(1.0 - 0.8)
    assert [d(Key("per_class", path="fused", cls=c, metric="recall")) for c in "abc"] == pytest.approx([0, 1 / 3, 0])
    assert d(Key("per_class", path="fused", cls="c", metric="recall"), "best") == pytest.approx(-0.5)
    assert d(Key("per_client", client="4", metric="accuracy")) == pytest.approx(3 / 5 - 1 / 5)
    assert d(Key("clients", metric="worst10_mean")) == pytest.approx((1 / 2 + 1 / 2) / 2 - (1 / 5 + 1 / 4) / 2)
    assert d(Key("summary", path="fused", metric="worst_class")) is None  # text
    assert report.delta(base, "final", Key("summary", path="fused", metric="accuracy")) is None
    assert report.deltas(base, "final") == {}


def test_compare_with_one_run_uses_the_latest_as_the_other(toy):
    report = build_report(toy.ws, ["fedavg"], compare=True)
    assert [r.name for r in report.runs] == ["fedavg", "fedcmi"]
    with pytest.raises(CmiError, match="needs two runs"):
        build_report(toy.ws, ["fedcmi"], compare=True)


def test_compare_refuses_runs_with_different_classes(toy):
    write_run(toy.ws, "other", RunSpec(classes=["x", "y"], partition=None))
    with pytest.raises(CmiError, match="different classes"):
        build_report(toy.ws, ["fedavg", "other"], compare=True)


def test_path_selection(toy):
    report = build_report(toy.ws, ["fedavg"], paths=["fused", "audio_only"])
    assert report.paths == ["fused", "audio_only"]
    assert not any(k.path == "visual_self" for k in report.values(report.runs[0], "final"))
    with pytest.raises(CmiError, match="unknown --path video_only"):
        build_report(toy.ws, ["fedavg"], paths=["video_only"])


def test_running_run_reports_best_so_far_marked_incomplete(toy):
    spec = fedavg_spec()
    spec.status, spec.rounds_done = "running", 2
    spec.test = {"best": Predictions(2, LABELS, spec.test["best"].preds)}
    spec.clients = {}
    spec.metrics = spec.metrics[:2]
    write_run(toy.ws, "live", spec)
    with open(toy.ws.artifact_dir("run", "live") / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 3, "val": {"accur')  # a line cut by a kill
    report = build_report(toy.ws, ["live"])
    run = report.runs[0]
    assert not run.run.complete and list(run.snapshots) == ["best"]
    assert run.run.notes[0].startswith("INCOMPLETE: run status is 'running' (2/4 rounds)")
    assert any("1 unreadable line" in n for n in run.run.notes)
    assert [line["round"] for line in run.run.metrics] == [1, 2]
    assert snapshot_title(run, "best") == "test-best · round 2 (best on validation so far)"
    tables = build_tables(report, per_class=True, per_client=True)
    assert [t.key for t in tables] == ["runs", "summary.live.best", "per_class.live.best", "per_client.live.best"]
    assert "INCOMPLETE" in tables[0].rows[0][4].text


def test_complete_status_without_final_predictions_is_incomplete(toy):
    spec = fedavg_spec()
    del spec.test["final"]
    write_run(toy.ws, "nofinal", spec)
    run = build_report(toy.ws, ["nofinal"]).runs[0].run
    assert not run.complete and "test-final.parquet is missing" in run.notes[0]


def test_failed_run_without_predictions_still_reports(toy):
    write_run(toy.ws, "dead", RunSpec(status="failed", rounds_done=0, metrics=[]))
    report = build_report(toy.ws, ["dead"])
    assert report.runs[0].snapshots == {}
    assert "no saved predictions yet" in report.runs[0].run.notes[0]
    assert [t.key for t in build_tables(report, per_class=True, per_client=True)] == ["runs"]


def test_not_a_run_gives_an_error_naming_cmi_train(toy, tmp_path):
    with pytest.raises(ArtifactError, match="not a run.*cmi train"):
        build_report(toy.ws, [str(toy.ws.artifact_dir("partition", "p"))])
    with pytest.raises(ArtifactError, match="cmi train"):
        build_report(toy.ws, ["no-such-run"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        build_report(toy.ws, [str(tmp_path / "empty")])
    with pytest.raises(ArtifactError, match="no run in workspace.*cmi train"):
        build_report(Workspace(tmp_path / "nothing"), [])


def test_corrupt_prediction_file_names_the_fix(toy):
    path = toy.ws.artifact_dir("run", "fedavg") / "predictions" / "test-final.parquet"
    pq.write_table(pa.table({"id": ["x"], "label": pa.array([0], pa.int32())}), path)
    with pytest.raises(ArtifactError, match="lacks column.*pred_fused.*cmi train"):
        build_report(toy.ws, ["fedavg"])


def test_missing_partition_leaves_modalities_unknown(toy):
    update_manifest(toy.ws.artifact_dir("run", "fedavg"), partition="gone")
    report = build_report(toy.ws, ["fedavg"])
    assert any("partition 'gone' not found" in n for n in report.runs[0].run.notes)
    assert report.value(report.runs[0], "final", Key("per_client", client="0", metric="modalities")) == "?"
    assert Key("clients", client="audio", metric="mean") not in report.runs[0].snapshots["final"].values
