import csv
import io
import json
import socket

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.experiments import Cell
from pipelines.experiments.record import write_experiment
from pipelines.experiments.runs import list_runs, summarize_run
from pipelines.training.progress import QuietProgress
from pipelines.training.session import open_session, run_engine
from tests.experiments.test_record import dead_pid
from tests.training.helpers import partitioned_workspace, quick_config


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = partitioned_workspace(tmp_path_factory.mktemp("runs"))
    for name, method, seed in (("a-fedavg", "fedavg", 0), ("b-fedcmi", "fedcmi", 1)):
        session = open_session(ws, quick_config(method=method, seed=seed, rounds=2), name=name)
        run_engine(session, QuietProgress(), threads=1)
    # a run whose training process died before its first round
    session = open_session(ws, quick_config(method="fedcmi", seed=0, rounds=2), name="c-killed")
    session.run.update(pid=dead_pid(), host=socket.gethostname())
    return ws


def test_a_summary_has_the_settings_progress_and_accuracy_at_the_best_round(ws):
    s = summarize_run(ws.artifact_dir("run", "b-fedcmi"))
    metrics = ws.artifact_dir("run", "b-fedcmi") / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    best = next(line for line in lines if line["round"] == s.best_round)
    assert (s.name, s.method, s.dataset, s.partition, s.seed, s.engine, s.status) == (
        "b-fedcmi", "fedcmi", "toy", ws.latest_name("partition"), 1, "local", "complete")
    assert (s.rounds_done, s.rounds_total) == (2, 2) and s.best_round in (1, 2)
    assert s.accuracy == best["test"]["accuracy"] and s.paths[0] == "fused"
    killed = summarize_run(ws.artifact_dir("run", "c-killed"))
    assert (killed.status, killed.rounds_done, killed.best_round, killed.accuracy) == ("interrupted", 0, None, {})
    assert summarize_run(ws.root / "not-a-run") is None


def test_filters_combine(ws):
    assert [s.name for s in list_runs(ws)] == ["a-fedavg", "b-fedcmi", "c-killed"]
    assert [s.name for s in list_runs(ws, methods=["fedcmi"])] == ["b-fedcmi", "c-killed"]
    assert [s.name for s in list_runs(ws, methods=["fedcmi"], statuses=["complete"])] == ["b-fedcmi"]
    assert [s.name for s in list_runs(ws, statuses=["interrupted"])] == ["c-killed"]
    assert list_runs(ws, partitions=["other"]) == []
    assert [s.name for s in list_runs(ws, names=["c-killed", "a-fedavg", "missing"])] == ["c-killed", "a-fedavg"]


def cmi(ws, *args):
    return CliRunner().invoke(app, ["--workspace", str(ws.root), "runs", *args], env={"COLUMNS": "80"})


def test_cmi_runs_as_json_csv_and_a_table_that_is_never_cut(ws):
    as_json = json.loads(cmi(ws, "--format", "json").stdout)
    assert [r["name"] for r in as_json] == ["a-fedavg", "b-fedcmi", "c-killed"]
    assert as_json[1] == summarize_run(ws.artifact_dir("run", "b-fedcmi")).to_dict()

    rows = list(csv.DictReader(io.StringIO(cmi(ws, "--format", "csv", "--method", "fedcmi").stdout)))
    assert [r["name"] for r in rows] == ["b-fedcmi", "c-killed"]
    assert float(rows[0]["accuracy.visual_only"]) == as_json[1]["accuracy"]["visual_only"]
    assert rows[1]["status"] == "interrupted" and rows[1]["best_round"] == "" and rows[1]["accuracy.fused"] == ""

    table = cmi(ws, "--status", "complete")
    assert table.exit_code == 0
    for text in ("a-fedavg", "b-fedcmi", "visual_self", ws.latest_name("partition")):
        assert text in table.stdout     # whole, although the table is wider than 80 columns
    assert "c-killed" not in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) > 80


def test_cmi_runs_of_an_experiment_and_bad_filters(ws):
    write_experiment(ws.artifact_dir("experiment", "e"), {"name": "e", "partitions": [], "grid": {}},
                     [Cell("b-fedcmi", "fedcmi", 1, "p"), Cell("a-fedavg", "fedavg", 0, "p")], "complete", {})
    result = cmi(ws, "--experiment", "e", "--format", "json")
    assert [r["name"] for r in json.loads(result.stdout)] == ["b-fedcmi", "a-fedavg"]
    assert cmi(ws, "--status", "done").exit_code == 2
    assert cmi(ws, "--format", "xml").exit_code == 2
    assert "no runs match" in cmi(ws, "--partition", "nope").stdout
