"""`cmi train --engine flower`: the session's remaining rounds as a Flower run.

The command has already created (or reopened) the run directory. This engine starts a loopback
deployment (a SuperLink and N SuperNodes on 127.0.0.1, under ``<run>/flower/deployment``), or a
simulation SuperLink (Flower's simulation runtime, under ``<run>/flower/simulation``), unless it
is given the address of a running SuperLink, submits the Flower app in ``app/`` with the run
config of :class:`~pipelines.engines.flower.protocol.RunSettings`, follows the rounds the
ServerApp writes into the run directory on the progress display, streams the ServerApp's log
into ``<run>/flower/serverapp.log``, and stops the deployment, leaving no process behind.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.artifacts import Workspace, canonical_json
from pipelines.errors import CmiError
from pipelines.training.progress import QuietProgress
from pipelines.training.session import RoundResult, TrainingSession

from pipelines.engines.flower.deployment import COMPLETED, FlowerControl, LoopbackDeployment, default_threads
from pipelines.engines.flower.node_data import write_train_cache
from pipelines.engines.flower.protocol import FLOWER_DIR, SERVER_ERROR, RunSettings
from pipelines.engines.flower.strategy import check_min_clients

#: the Flower app `flwr run` submits (its pyproject.toml names the ServerApp and ClientApp)
APP_DIR = Path(__file__).resolve().parent / "app"
SERVER_LOG = "serverapp.log"


@dataclass(frozen=True)
class FlowerOptions:
    """How the Flower engine runs; none of it changes what a round computes.

    ``supernodes``: SuperNodes of the loopback deployment (default: one per CPU core, at most one
    per client); ``superlink``: ``host:port`` of a running SuperLink to submit to instead (its
    SuperNodes started with ``--node-config 'partition-id=I num-partitions=N'``), over TLS
    checked against ``root_certificates`` (PEM) if given, else plaintext; ``simulation``: run on
    Flower's simulation runtime (a SuperLink started with ``--simulation``, ``supernodes``
    simulated SuperNodes in Ray workers; needs ``flwr[simulation]``) instead of a loopback
    deployment; ``node_threads``: torch threads of each SuperNode of a loopback deployment
    (default: the CPU cores split between them); ``min_clients``, ``round_timeout``,
    ``nodes_timeout``: see :class:`RunSettings`."""

    supernodes: int | None = None
    node_threads: int | None = None
    superlink: str | None = None
    root_certificates: Path | None = None
    simulation: bool = False
    min_clients: int = 1
    round_timeout: float = 3600.0
    nodes_timeout: float = 120.0


def default_supernodes(num_clients: int) -> int:
    return max(1, min(num_clients, os.cpu_count() or 1))


def run_settings(session: TrainingSession, options: FlowerOptions) -> RunSettings:
    partition = session.data.partition
    return RunSettings(
        workspace=str(partition.path.parents[1]),
        run=str(session.run.path.resolve()),
        partition=partition.name,
        config=canonical_json(session.config.to_dict()),
        round_timeout=float(options.round_timeout),
        min_clients=int(options.min_clients),
        nodes_timeout=float(options.nodes_timeout),
        any_client=not options.superlink,
    )


def run(session: TrainingSession, progress: QuietProgress, options: FlowerOptions | None = None) -> None:
    """Train ``session`` from its next round to its last on Flower (module docstring); a run
    that does not end well raises a CmiError with the ServerApp's message."""
    options = options or FlowerOptions()
    if session.finished:
        with session.guard():
            return
    check_min_clients(session, options.min_clients)
    if options.simulation:
        check_simulation_runtime(options)
    flower_dir = session.run.path / FLOWER_DIR
    (flower_dir / SERVER_ERROR).unlink(missing_ok=True)
    settings = run_settings(session, options)
    if not options.superlink or _is_loopback(options.superlink):
        write_train_cache(Workspace(settings.workspace), session.data)   # so no SuperNode parses the shards
    deployment = None
    if options.superlink:
        control = FlowerControl(flower_dir / "control", options.superlink, options.root_certificates)
    else:
        supernodes = options.supernodes or default_supernodes(len(session.clients))
        deployment = LoopbackDeployment(flower_dir / ("simulation" if options.simulation else "deployment"),
                                        supernodes, node_extra={"threads": options.node_threads
                                                                or default_threads(supernodes), "any-client": True},
                                        simulation=options.simulation)
        control = deployment.control
    follower = _RoundFollower(session, progress)
    try:
        if deployment is not None:
            deployment.start(wait_nodes=False)
        run_id = control.start_run(APP_DIR, settings.to_run_config(),
                                   deployment.federation_config if deployment is not None else None)
        logs = control.stream_logs(run_id, flower_dir / SERVER_LOG)
        try:
            while logs.poll() is None:  # the log stream ends with the run
                follower.update()
                if deployment is not None and not deployment.superlink.alive():
                    raise CmiError(f"the SuperLink stopped; see {deployment.superlink.log}.")
                time.sleep(0.5)
        except KeyboardInterrupt:
            control.stop_run(run_id)
            raise
        finally:
            _end(logs)
        status = control.wait_for_run(run_id, timeout=60.0).get("status")
        follower.update()
    finally:
        progress.close()
        if deployment is not None:
            deployment.stop()
    session.restore()
    if status != COMPLETED:
        if session.run.artifact().manifest.get("status") == "running":   # the ServerApp died before marking it
            session.mark("failed")
        error = flower_dir / SERVER_ERROR
        detail = error.read_text(encoding="utf-8") if error.is_file() else \
            f"the Flower run ended with status {status}; see {flower_dir / SERVER_LOG}"
        raise CmiError(detail)


def check_simulation_runtime(options: FlowerOptions) -> None:
    """A CmiError naming the fix when the simulation runtime cannot be used."""
    if options.superlink:
        raise CmiError("--simulation starts its own simulation SuperLink; drop --superlink (or --simulation).")
    if importlib.util.find_spec("ray") is None:
        raise CmiError("Flower's simulation runtime needs Ray: pip install -c constraints.txt \"cmi[simulation]\" "
                       "(from a checkout: pip install -c constraints.txt -e \".[simulation]\"), or drop --simulation "
                       "to run on a loopback deployment.")


def _is_loopback(address: str) -> bool:
    return address.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1")


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _RoundFollower:
    """Feeds ``progress`` from what the ServerApp writes into the run directory (the manifest's
    ``rounds_done`` and the metrics lines)."""

    def __init__(self, session: TrainingSession, progress: QuietProgress):
        self.session, self.progress = session, progress
        self.done = session.rounds_done
        progress.start(session.config.rounds, self.done)
        self._started(self.done + 1)

    def _started(self, round_: int) -> None:
        if round_ <= self.session.config.rounds:
            self.progress.round_started(round_, self.session.plan_round(round_))

    def update(self) -> None:
        rounds_done = int(self.session.run.artifact().manifest.get("rounds_done") or 0)
        if rounds_done <= self.done:
            return
        records = {m["round"]: m for m in self.session.run.read_metrics()}
        for round_ in range(self.done + 1, rounds_done + 1):
            record = records.get(round_)
            self.progress.round_finished(RoundResult(round_, record["clients"] if record else [], [], record))
            self._started(round_ + 1)
        self.done = rounds_done
