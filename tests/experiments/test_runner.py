"""`cmi experiment run` for real: worker processes, failed cells, skipped and resumed cells."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.experiments import load_experiment
from pipelines.experiments.runner import run_experiment
from pipelines.experiments.spec import build_spec, expand
from tests.training.helpers import QUICK, partitioned_workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BASE = ["--set", "clients_per_round=3", "--set", "eval_batch_size=64", "--set", "model.embed_dim=16",
        "--set", "train.lr=0.05", "--set", "train.local_epochs=1", "--set", "train.batch_size=16", "--device", "cpu"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("runner"))


def cmi(ws, *args):
    return CliRunner().invoke(app, ["--workspace", str(ws.root), *args])


def test_cells_run_in_parallel_a_failed_cell_is_recorded_and_finished_cells_are_skipped(ws):
    args = ["experiment", "run", "--name", "e1", "--method", "fedavg", "--seeds", "0,1", "--rounds", "2",
            "--grid", "clients_per_round=3,100", *BASE, "--jobs", "2", "--threads", "2"]
    result = cmi(ws, *args)
    # the partition has 6 clients: the clients_per_round=100 cells fail, the others complete
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "4 cell(s): 0 already complete (skipped), 4 to train, 2 at a time" in text
    assert "done e1-fedavg-clients_per_round=3-s0" in text and "failed e1-fedavg-clients_per_round=100-s1" in text
    assert "2 of 4 cell(s) did not complete" in text and "run the same command again" in text
    exp = load_experiment(ws, "e1")
    assert exp.status == "failed"
    by_run = {c.run: c for c in exp.cells}
    assert list(by_run) == ["e1-fedavg-clients_per_round=3-s0", "e1-fedavg-clients_per_round=3-s1",
                            "e1-fedavg-clients_per_round=100-s0", "e1-fedavg-clients_per_round=100-s1"]
    done, failed = exp.cells[:2], exp.cells[2:]
    assert [c.status for c in done] == ["complete", "complete"]
    assert all(c.status == "failed" and "clients_per_round is 100" in c.error for c in failed)
    for cell in done:   # 2 jobs share the 2 threads
        manifest = json.loads((exp.run_path(cell) / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["threads"] == 1
        assert manifest["params"]["seed"] == cell.seed and manifest["params"]["rounds"] == 2
    status = cmi(ws, "experiment", "status", "e1")
    assert status.exit_code == 0 and "clients_per_round is 100" in " ".join(status.output.split())

    metrics = [exp.run_path(c) / "metrics.jsonl" for c in done]
    stamps = [p.stat().st_mtime_ns for p in metrics]
    again = cmi(ws, *args, "--quiet")
    assert again.exit_code == 2 and again.stdout == f"{exp.path}\n"    # --quiet: one line, where it went
    assert [p.stat().st_mtime_ns for p in metrics] == stamps      # not trained, not even reopened
    assert [c.status for c in load_experiment(ws, "e1").cells] == ["complete", "complete", "failed", "failed"]


def test_an_interrupted_cell_resumes_from_its_checkpoint(ws):
    spec = build_spec(name="e2", methods=["fedavg"], seeds=[0], settings={**QUICK, "rounds": 3})
    (planned,) = expand(spec, ws)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.training.interrupted_run", str(ws.root), planned.cell.run,
         json.dumps(planned.config.to_dict()), "1", "after-checkpoint"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_dir = ws.artifact_dir("run", planned.cell.run)
    first = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(first) == 1

    exp = run_experiment(ws, spec, jobs=1)
    assert exp.status == "complete" and [c.status for c in exp.cells] == ["complete"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]
    assert lines[0] == first[0]       # round 1 was not trained again
