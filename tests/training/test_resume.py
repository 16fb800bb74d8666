"""kill -9 in the middle of a run, `cmi train --resume`, and the result of an uninterrupted run:
FedCMI; CMSFed, whose server state (prototypes, sketches, distance matrices, imbalances) the
checkpoint carries and whose round plan depends on it; AUG, AGM and ARM (see SETTINGS); and method local, whose per-client
states live in content-addressed files beside the checkpoint (a kill before the checkpoint
leaves the round's new state files unreferenced)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.training.config import resolve_config
from pipelines.training.progress import QuietProgress
from pipelines.training.run_dir import RunDirectory
from pipelines.training.session import open_session, run_engine
from tests.training.helpers import QUICK, partitioned_workspace

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    "fedcmi": {**QUICK, "method": "fedcmi", "rounds": 4},
    "cmsfed": {**QUICK, "method": "cmsfed", "rounds": 4, "clients_per_round": 2},
    # AUG's learner counts live in the weights, AGM's running means in the client states, ARM's
    # weak modality in the server state set from the evaluation
    "aug": {**QUICK, "method": "aug", "rounds": 4},
    "agm": {**QUICK, "method": "agm", "rounds": 4},
    "arm": {**QUICK, "method": "arm", "rounds": 4, "arm": {"proj_dim": 8}},
    "local": {**QUICK, "method": "local", "rounds": 4, "clients_per_round": 2},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def reference(request, workspace):
    """The method, the workspace and an uninterrupted run of it."""
    session = open_session(workspace, resolve_config(SETTINGS[request.param]), name=f"uninterrupted-{request.param}")
    run_engine(session, QuietProgress(), threads=1)   # the thread count of the interrupted runs
    return request.param, workspace, session.run


def kill_during_run(ws, name: str, settings: dict, kill_round: int, where: str) -> RunDirectory:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.training.interrupted_run", str(ws.root), name, json.dumps(settings),
         str(kill_round), where],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return RunDirectory(ws.artifact_dir("run", name))


def assert_same_run(run: RunDirectory, ref: RunDirectory) -> None:
    a, b = load_file(str(run.checkpoint_file)), load_file(str(ref.checkpoint_file))
    assert set(a) == set(b)
    for key in a:   # global weights and the method's server state (CMSFed's ρ is NaN for unimodal clients)
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)
    # client states: the same files (named by their content), and none left unreferenced
    assert run.load_checkpoint().clients == ref.load_checkpoint().clients
    store = run.client_states()
    on_disk = sorted(p.name for p in store.directory.iterdir()) if store.directory.is_dir() else []
    assert on_disk == sorted(f"{d}.safetensors" for d in set(run.load_checkpoint().clients.values()))
    strip = lambda lines: [{k: v for k, v in line.items() if k != "time_s"} for line in lines]  # noqa: E731
    assert strip(run.read_metrics()) == strip(ref.read_metrics())
    for name in ("test-final", "test-best", "clients-final", "clients-best"):
        t1 = pq.read_table(run.path / "predictions" / f"{name}.parquet")
        t2 = pq.read_table(ref.path / "predictions" / f"{name}.parquet")
        assert t1.equals(t2) and t1.schema.metadata == t2.schema.metadata, name
    m1, m2 = run.artifact().manifest, ref.artifact().manifest
    assert (m1["status"], m1["rounds_done"], m1["best_round"]) == ("complete", 4, m2["best_round"])


@pytest.mark.slow
@pytest.mark.parametrize("where, checkpointed", [("after-checkpoint", 2), ("before-checkpoint", 1)])
def test_resume_after_kill_9_ends_exactly_like_an_uninterrupted_run(reference, where, checkpointed):
    method, ws, ref = reference
    run = kill_during_run(ws, f"killed-{method}-{where}", SETTINGS[method], 2, where)
    manifest = run.artifact().manifest
    assert manifest["status"] == "running" and manifest["rounds_done"] == checkpointed
    assert run.load_checkpoint().round == checkpointed
    if method == "cmsfed":   # the plan of round 3 depends on it
        assert {"server/dist", "server/prototypes", "server/rho"} <= set(load_file(str(run.checkpoint_file)))
    assert [line["round"] for line in run.read_metrics()] == [1, 2]  # before-checkpoint: ahead by one
    if method == "local":
        referenced = set(run.load_checkpoint().clients.values())
        on_disk = {p.stem for p in run.client_states().directory.iterdir()}
        assert referenced and referenced <= on_disk
        assert (on_disk > referenced) == (where == "before-checkpoint")   # round 2's states, not yet checkpointed

    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "train", "--resume", run.name, "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_run(run, ref)
