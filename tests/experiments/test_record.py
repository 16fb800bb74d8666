import json
import subprocess

import pytest

from pipelines.artifacts import ArtifactError, Workspace, write_manifest
from pipelines.experiments import Cell, load_experiment
from pipelines.experiments.record import process_alive, write_experiment

PARAMS = {"name": "exp", "methods": ["fedavg", "fedcmi"], "seeds": [0], "partitions": ["p"],
          "grid": {"fedcmi.kappa": [1, 2]}, "base": {"rounds": 2}, "dataset": None}


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def make_run(ws: Workspace, name: str, status: str) -> None:
    write_manifest(ws.artifact_dir("run", name), "run", {"rounds": 2}, extra={"status": status})


def write(ws: Workspace, cells, status="running", pid=None):
    directory = ws.artifact_dir("experiment", "exp")
    write_experiment(directory, PARAMS, cells, status, {"jobs": 2})
    if pid is not None:
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["pid"] = pid
        (directory / "manifest.json").write_text(json.dumps(manifest))
    ws.set_latest("experiment", "exp")


CELLS = [
    Cell("exp-fedavg-s0", "fedavg", 0, "p", {}, "complete"),
    Cell("exp-fedcmi-kappa=1-s0", "fedcmi", 0, "p", {"fedcmi.kappa": 1}, "running"),
    Cell("exp-fedcmi-kappa=2-s0", "fedcmi", 0, "p", {"fedcmi.kappa": 2}, "failed", "boom: fix it"),
]


def test_load_experiment_reads_the_grid_and_the_cells(tmp_path):
    ws = Workspace(tmp_path)
    write(ws, CELLS)
    exp = load_experiment(ws, "exp")
    assert (exp.name, exp.status, exp.methods, exp.seeds, exp.partitions) == ("exp", "running", ["fedavg", "fedcmi"],
                                                                             [0], ["p"])
    assert exp.grid == {"fedcmi.kappa": [1, 2]} and exp.base == {"rounds": 2}
    assert exp.cells == CELLS and exp.cells[1].name == exp.cells[1].run
    assert exp.run_path(exp.cells[0]) == ws.artifact_dir("run", "exp-fedavg-s0")
    assert exp.counts()["failed"] == 1 and exp.counts()["pending"] == 0
    manifest = json.loads((exp.path / "manifest.json").read_text())
    assert manifest["kind"] == "experiment" and manifest["params"]["cells"][2] == {
        "run": "exp-fedcmi-kappa=2-s0", "method": "fedcmi", "seed": 0, "partition": "p",
        "overrides": {"fedcmi.kappa": 2}, "status": "failed", "error": "boom: fix it"}
    # by path and as the latest, too
    assert load_experiment(ws, exp.path).cells == CELLS and load_experiment(ws).name == "exp"


def test_a_killed_runner_reads_interrupted_and_a_run_finished_since_reads_complete(tmp_path):
    ws = Workspace(tmp_path)
    write(ws, CELLS, pid=dead_pid())
    make_run(ws, "exp-fedcmi-kappa=2-s0", "complete")   # finished by hand with `cmi train --resume`
    exp = load_experiment(ws, "exp")
    assert exp.status == "interrupted"
    assert [c.status for c in exp.cells] == ["complete", "interrupted", "complete"]
    assert exp.cells[2].error is None


def test_no_experiment_names_the_command_that_makes_one(tmp_path):
    with pytest.raises(ArtifactError, match="cmi experiment run"):
        load_experiment(Workspace(tmp_path), "nope")
    with pytest.raises(ArtifactError, match="cmi experiment run"):
        load_experiment(Workspace(tmp_path))


def test_process_alive():
    import os
    import socket

    assert process_alive(os.getpid(), socket.gethostname())
    assert not process_alive(dead_pid(), socket.gethostname())
    assert not process_alive(None, socket.gethostname())
    assert process_alive(1234, "another-machine")
