"""`--engine flower` on real processes, loopback only: a SuperLink and SuperNodes as separate
processes (started by `cmi flower up`, by the engine itself, or by the test), the same global
weights as the local engine, a SuperNode killed mid-round, and no process left behind.

Tolerance of the weight comparisons: 1e-6 absolute (float32 weights of order 0.1-1; every
process trains on one torch thread, so in practice they agree to the last bit)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from cmi_cli import flower as flower_cli
from pipelines.artifacts import Workspace
from pipelines.engines.flower.deployment import (
    COMPLETED, FlowerControl, LoopbackDeployment, free_ports,
)
from pipelines.engines.flower.run import FlowerOptions, run as run_flower
from pipelines.engines.local import run as run_local
from pipelines.errors import CmiError
from pipelines.training.progress import QuietProgress
from pipelines.training.session import open_session
from tests.training.helpers import partitioned_workspace, quick_config

pytestmark = pytest.mark.slow

PROBE_APP = Path(__file__).resolve().parent / "probe_app"
ATOL = 1e-6


def processes_in(folder: Path) -> list[int]:
    """Pids of the processes whose working directory is inside ``folder`` (every Flower process
    cmi starts runs there, and their children inherit it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(os.readlink(f"/proc/{entry}/cwd")).is_relative_to(folder):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def cli(workspace: Workspace, *args: str):
    app = typer.Typer()

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = {"workspace": workspace.root}

    flower_cli.register(app)
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("flower-ws"), clients=3, missing=0.3)


@pytest.fixture(scope="class")
def cli_deployment(ws, tmp_path_factory):
    """`cmi flower up` with 3 SuperNodes (one torch thread each) for the tests of one class (so it
    does not idle through the others); `cmi flower down` afterwards must leave no process behind."""
    home = tmp_path_factory.mktemp("flower-up") / "home"
    port = free_ports(1)[0]
    result = cli(ws, "flower", "up", "--supernodes", "3", "--port", str(port), "--threads", "1", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert f"--superlink 127.0.0.1:{port}" in result.output
    yield f"127.0.0.1:{port}", home
    result = cli(ws, "flower", "down", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert processes_in(home) == []


def train(ws, name, engine, options=None, **settings):
    session = open_session(ws, quick_config(engine=engine, **settings), name=name)
    if engine == "local":
        run_local(session, QuietProgress())
    else:
        run_flower(session, QuietProgress(), options)
    return session


def assert_same_training(flower, local):
    for key, value in local.global_state.items():
        assert torch.allclose(flower.global_state[key].double(), value.double(), rtol=0, atol=ATOL), key
    for got, want in zip(flower.run.read_metrics(), local.run.read_metrics(), strict=True):
        assert (got["round"], got["clients"], got["failed_clients"]) == (want["round"], want["clients"], [])
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=ATOL)
        assert got["test"]["accuracy"] == pytest.approx(want["test"]["accuracy"], abs=ATOL)
    assert flower.run.artifact().manifest["status"] == "complete"
    assert flower.run.artifact().manifest["engine"] == "flower"


class TestOnCmiFlowerUp:
    """A deployment started by `cmi flower up`, used through --superlink."""

    def test_probe_app(self, ws, cli_deployment, tmp_path):
        address, home = cli_deployment
        status = cli(ws, "flower", "status", "--home", str(home))
        assert status.exit_code == 0 and "3 of 3 SuperNode(s) online" in status.output, status.output
        out = tmp_path / "out.json"
        control = FlowerControl(tmp_path / "control", address)
        info = control.wait_for_run(control.start_run(PROBE_APP, {"rounds": 2, "out": str(out)}), timeout=180)
        assert info["status"] == COMPLETED
        result = json.loads(out.read_text())
        # each round every node adds partition-id + 1 and the server averages: +2 per round
        assert result["w"] == [4.0, 4.0, 4.0]
        # every node got its own partition-id and counted both rounds in its context.state
        assert result["rounds_per_partition"] == {"0": 2, "1": 2, "2": 2}

    def test_fedavg_equals_the_local_engine(self, ws, cli_deployment):
        address, _ = cli_deployment
        settings = dict(method="fedavg", rounds=2, clients_per_round=3)
        local = train(ws, "local-fedavg", "local", **settings)
        flower = train(ws, "flower-fedavg", "flower", FlowerOptions(superlink=address, round_timeout=180), **settings)
        assert_same_training(flower, local)

    def test_cmsfed_equals_the_local_engine(self, ws, cli_deployment):
        """The method whose server plans each round from its state: the broadcast prototypes, the
        clients' payloads and the selection cross real processes."""
        address, _ = cli_deployment
        settings = dict(method="cmsfed", rounds=3, clients_per_round=2)
        local = train(ws, "local-cmsfed", "local", **settings)
        flower = train(ws, "flower-cmsfed", "flower", FlowerOptions(superlink=address, round_timeout=180), **settings)
        assert_same_training(flower, local)
        for key, value in local.server_state.items():
            torch.testing.assert_close(flower.server_state[key], value, rtol=0, atol=ATOL, equal_nan=True, msg=key)
        assert [line["trained_only"] for line in flower.run.read_metrics()] == \
            [line["trained_only"] for line in local.run.read_metrics()]


def test_fedcmi_on_its_own_deployment_equals_the_local_engine_and_leaves_no_process(ws):
    settings = dict(method="fedcmi", rounds=2, clients_per_round=3)
    local = train(ws, "local-fedcmi", "local", **settings)
    flower = train(ws, "flower-fedcmi", "flower", FlowerOptions(supernodes=3, round_timeout=180), **settings)
    assert_same_training(flower, local)
    assert (flower.run.path / "flower" / "serverapp.log").is_file()
    assert processes_in(flower.run.path / "flower") == []


def ray_processes() -> list[str]:
    """Command lines of the Ray processes (GCS server, raylets, workers) running now."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(name in command for name in ("gcs_server", "raylet", "ray::", "default_worker.py")):
                found.append(command.strip())
    return found


def test_fedcmi_on_the_simulation_runtime_equals_the_local_engine_and_leaves_no_process(ws):
    assert ray_processes() == []
    settings = dict(method="fedcmi", rounds=2, clients_per_round=3)
    local = train(ws, "local-fedcmi-sim", "local", **settings)
    flower = train(ws, "sim-fedcmi", "flower", FlowerOptions(supernodes=3, simulation=True, round_timeout=180),
                   **settings)
    assert_same_training(flower, local)
    assert processes_in(flower.run.path / "flower") == []
    assert ray_processes() == []


def test_a_supernode_killed_mid_round_fails_its_clients_and_the_run_finishes(ws, tmp_path):
    """SIGKILL: the SuperLink still lists the node, so the round waits for --round-timeout (60 s,
    above the healthy nodes' reply time on a busy 2-core machine) and goes on with the others."""
    deployment = LoopbackDeployment(tmp_path / "home", 3, node_extra={"threads": 1})
    session = open_session(ws, quick_config(engine="flower", method="fedavg", rounds=1, clients_per_round=3),
                           name="flower-killed")
    killed = threading.Event()

    def kill_node_1_while_it_trains():
        seen: set[int] = set()   # ClientApp processes of node 1: the first answers the query, the second trains
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            seen.update(deployment.clientapps(1))
            if len(seen) >= 2:
                deployment.kill_supernode(1, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_node_1_while_it_trains)
    with deployment:
        killer.start()
        run_flower(session, QuietProgress(),
                   FlowerOptions(superlink=deployment.address, min_clients=2, round_timeout=60))
        killer.join()
        # a new run on the damaged deployment: the ServerApp's error reaches this process. 20 s
        # leaves the live SuperNodes time to answer the query (a fresh ClientApp process each:
        # several seconds on a busy machine), so only partition-id 1 is missing.
        again = open_session(ws, quick_config(engine="flower", method="fedavg", rounds=1, clients_per_round=3),
                             name="flower-no-node-1")
        with pytest.raises(CmiError, match=r"no SuperNode serves partition-id\(s\) \[1\] after 20 s"):
            run_flower(again, QuietProgress(), FlowerOptions(superlink=deployment.address, nodes_timeout=20))
    assert killed.is_set()
    # client c lives on SuperNode c % 3: the round finished with clients 0 and 2
    [line] = session.run.read_metrics()
    assert (line["round"], line["clients"], line["failed_clients"]) == (1, [0, 2], [1])
    assert session.run.artifact().manifest["status"] == "complete"
    assert again.run.artifact().manifest["status"] == "failed"
    assert processes_in(tmp_path / "home") == []
