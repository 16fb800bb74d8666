"""A Flower deployment on this machine, and the `flwr` CLI that drives a SuperLink.

:class:`LoopbackDeployment` starts a SuperLink and N SuperNodes on 127.0.0.1 as separate
processes (the same commands a multi-machine deployment runs, see the README), each in its own
process group, and stops them cleanly: SIGTERM, a grace period, SIGKILL for stragglers, then a
wait until the detached ``flower-superexec`` / ``flwr-clientapp`` / ``flwr-serverapp`` children of
every group are gone. :class:`FlowerControl` runs ``flwr`` commands (start a run, read its
status, stop it, read its logs) against one SuperLink through a connection written in
``$FLWR_HOME/config.toml``.

Every process gets the environment of :func:`flower_environment`: ``FLWR_HOME`` in a directory
of ours, no telemetry, no update check, and never a runtime installation of the app's
dependencies (a SuperLink would otherwise ``uv sync`` a fresh environment, gigabytes of CUDA
wheels included).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import tomli_w

from pipelines.artifacts import atomic_write_json, atomic_write_text
from pipelines.errors import CmiError

LOOPBACK = "127.0.0.1"
#: name of the SuperLink connection cmi writes into ``$FLWR_HOME/config.toml``
CONNECTION = "cmi"
#: ``flwr list`` status of a run that ended well
COMPLETED = "finished:completed"
#: state file of a deployment started by `cmi flower up`, inside its home directory
STATE_FILE = "deployment.json"


def flower_environment(home: Path) -> dict[str, str]:
    """This process's environment plus Flower's safety settings and ``home`` as ``FLWR_HOME``;
    this interpreter's script directory comes first on ``PATH`` (SuperLink and SuperNode start
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name)."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        # A SuperExec checks for a task to launch (a ClientApp or ServerApp process) every second
        # by default; every round waits for one such check per SuperNode, and a local check costs
        # nothing.
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
    )
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def script(name: str) -> str:
    """The path of console script ``name`` (``flwr``, ``flower-superlink``...) beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def default_threads(supernodes: int) -> int:
    """Torch threads per SuperNode when ``supernodes`` of them share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // supernodes)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    atomic_write_text(path, tomli_w.dumps(dict(values)))
    return path


# ----------------------------------------------------------------------------- processes


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_group(pid: int) -> int | None:
    """The process group of ``pid``; None once it has exited (gone, or a zombie waiting for its
    parent to reap it), read from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _, pgrp = stat[stat.rfind(")") + 2:].split()[:3]  # fields after "pid (comm) "
    return None if state in ("Z", "X") else int(pgrp)


def group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that have not exited."""
    return [pid for pid in _pids() if process_group(pid) == pgid]


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_flower_process(pid: int) -> bool:
    """Whether ``pid`` runs a Flower program (SuperLink, SuperNode, SuperExec, ServerApp, ClientApp)."""
    command = process_cmdline(pid)
    return "flower-super" in command or "flwr-" in command


@dataclass
class FlowerProcess:
    """A SuperLink or SuperNode we started, leader of its own process group (pgid == pid).
    ``popen`` is None when it was started by another cmi process (``cmi flower up``)."""

    name: str
    pid: int
    log: Path
    popen: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_flower_process(self.pid)

    def groups(self) -> set[int]:
        """Its process group and those of the processes started with ``--parent-pid`` it: the
        SuperLink starts its SuperExec (and so the ServerApps) in a new session."""
        marker = f"--parent-pid {self.pid}"
        children = {process_group(pid) for pid in _pids() if marker in process_cmdline(pid)}
        return {self.pid} | {g for g in children if g is not None}

    def reap(self) -> None:
        if self.popen is not None:
            self.popen.poll()


def _start(name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path) -> FlowerProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    return FlowerProcess(name, popen.pid, log, popen)


def signal_groups(groups: set[int], sig: int) -> None:
    """Send ``sig`` to each process group that still holds a Flower process (a recorded group
    whose processes are gone may since belong to someone else)."""
    for pgid in groups:
        if any(is_flower_process(pid) for pid in group_members(pgid)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop_processes(processes: Sequence[FlowerProcess], grace: float = 10.0, kill_after: float = 10.0) -> list[int]:
    """SIGTERM the process groups of ``processes`` (and of their SuperExecs), wait up to ``grace``
    s for every member to exit, SIGKILL the rest and wait up to ``kill_after`` s more; return the
    pids still present (empty on success)."""
    groups = set().union(*(proc.groups() for proc in processes)) if processes else set()
    signal_groups(groups, signal.SIGTERM)
    if not _wait_groups_empty(processes, groups, grace):
        signal_groups(groups, signal.SIGKILL)
        _wait_groups_empty(processes, groups, kill_after)
    return sorted(pid for pgid in groups for pid in group_members(pgid))


def _wait_groups_empty(processes: Sequence[FlowerProcess], groups: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for proc in processes:
            proc.reap()
        if not any(group_members(pgid) for pgid in groups):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# ----------------------------------------------------------------------------- flwr CLI


class FlowerControl:
    """The ``flwr`` CLI pointed at one SuperLink (``address`` host:port) through a connection
    named :data:`CONNECTION` in ``home/config.toml``: TLS verified with ``root_certificates`` (a
    PEM file) when given, else plaintext (a SuperLink started with ``--insecure``)."""

    def __init__(self, home: Path, address: str, root_certificates: Path | None = None):
        self.home = Path(home).resolve()
        self.address = address
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = flower_environment(self.home)
        security = {"root-certificates": str(Path(root_certificates).resolve())} if root_certificates else \
            {"insecure": True}
        write_toml(self.home / "config.toml", {
            "superlink": {"default": CONNECTION, CONNECTION: {"address": address, **security}},
        })

    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``flwr ARGS`` and return its stdout; a failure is a CmiError with its output."""
        argv = [script("flwr"), *args]
        try:
            done = subprocess.run(argv, env=self.env, cwd=self.home, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CmiError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s; is the SuperLink at "
                           f"{self.address} running?") from None
        if done.returncode != 0:
            detail = (done.stdout + done.stderr).strip()[-2000:]
            raise CmiError(f"`flwr {' '.join(args)}` failed (SuperLink {self.address}): {detail}")
        return done.stdout

    def flwr_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        out = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            reply = json.loads(out)
        except ValueError:
            raise CmiError(f"`flwr {' '.join(args)}` printed no JSON: {out[-500:]!r}") from None
        if not reply.get("success", False):
            raise CmiError(f"`flwr {' '.join(args)}` reported a failure: {reply}")
        return reply

    def online_nodes(self) -> list[int]:
        """Node ids of the SuperNodes the SuperLink sees online."""
        nodes = self.flwr_json("supernode", "list", CONNECTION).get("nodes", [])
        return [int(n["node-id"]) for n in nodes if n.get("status") == "online"]

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.online_nodes()
            if len(nodes) >= count:
                return nodes
            if time.monotonic() >= deadline:
                raise CmiError(f"only {len(nodes)} of {count} SuperNodes came online within {timeout:.0f} s; "
                               f"see their logs in {self.home / 'logs'}.")
            time.sleep(1.0)

    def start_run(self, app_dir: Path, run_config: Mapping[str, Any],
                  federation_config: Mapping[str, Any] | None = None) -> int:
        """Submit the Flower app in ``app_dir`` with ``run_config`` overrides (and, for a
        simulation SuperLink, ``federation_config``); return the run id."""
        overrides = write_toml(self.home / "run-config.toml", run_config)
        federation = ["--federation-config", " ".join(f"{k}={v}" for k, v in federation_config.items())] \
            if federation_config else []
        reply = self.flwr_json("run", str(Path(app_dir).resolve()), CONNECTION, "--run-config", str(overrides),
                               *federation)
        return int(reply["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        """``flwr list`` for one run (keys ``status``, ``status-details``, ``elapsed``...)."""
        runs = self.flwr_json("list", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        if not runs:
            raise CmiError(f"the SuperLink at {self.address} knows no run {run_id}.")
        return runs[0]

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), CONNECTION)

    def stream_logs(self, run_id: int, log: Path) -> subprocess.Popen:
        """``flwr log RUN --stream`` into ``log`` in the background (it exits when the run ends)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen([script("flwr"), "log", str(run_id), CONNECTION, "--stream"], env=self.env,
                                    cwd=self.home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait_for_run(self, run_id: int, timeout: float | None = None, poll: float = 2.0) -> dict[str, Any]:
        """Poll until run ``run_id`` is finished (any outcome) and return its ``flwr list`` info."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.run_info(run_id)
            if str(info.get("status", "")).startswith("finished"):
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise CmiError(f"Flower run {run_id} did not finish within {timeout:.0f} s (status {info.get('status')}).")
            time.sleep(poll)


# ----------------------------------------------------------------------------- loopback deployment


def node_config(index: int, count: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The node config of SuperNode ``index`` of ``count``: ``partition-id`` / ``num-partitions``
    (which clients it hosts, see :func:`pipelines.engines.flower.protocol.hosted_clients`) plus
    ``extra`` keys (e.g. ``workspace``, ``threads``)."""
    return {"partition-id": index, "num-partitions": count, **(extra or {})}


class LoopbackDeployment:
    """A SuperLink and ``supernodes`` SuperNodes on 127.0.0.1, each a process group of ours; with
    ``simulation``, a SuperLink with Flower's simulation runtime instead (``flwr[simulation]``,
    i.e. Ray), which simulates the SuperNodes inside each run (:attr:`federation_config`).

    Files live under ``home``: ``config.toml`` (the `flwr` connection), ``logs/*.log``, the
    node configs, and :data:`STATE_FILE` (pids and ports, for :meth:`attach`). Use it as a
    context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, home: str | os.PathLike, supernodes: int, *, node_extra: Mapping[str, Any] | None = None,
                 port: int | None = None, simulation: bool = False):
        if supernodes < 1:
            raise CmiError(f"a deployment needs at least 1 SuperNode, got {supernodes}; raise --supernodes.")
        self.home = Path(home).resolve()
        self.supernodes = supernodes
        self.simulation = simulation
        self.node_extra = dict(node_extra or {})
        ports = free_ports((0 if simulation else supernodes) + (0 if port else 1))
        self.port = port or ports.pop()
        self.node_ports = ports
        self.superlink: FlowerProcess | None = None
        self.nodes: list[FlowerProcess] = []
        self.control = FlowerControl(self.home, self.address)

    @property
    def federation_config(self) -> dict[str, Any] | None:
        """What `flwr run` tells a simulation SuperLink: ``supernodes`` simulated SuperNodes, one
        CPU each (so their ClientApps train side by side, one torch thread each); None for a
        deployment, whose SuperNodes are processes of their own."""
        if not self.simulation:
            return None
        return {"num-supernodes": self.supernodes, "client-resources-num-cpus": 1}

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def __enter__(self) -> "LoopbackDeployment":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, wait_nodes: bool = True, timeout: float = 60.0) -> None:
        """Start the SuperLink, wait until it accepts connections, start the SuperNodes and (with
        ``wait_nodes``) wait until the SuperLink sees them all online. On failure everything
        started is stopped again."""
        try:
            env = self.control.env
            self.superlink = _start("superlink", [
                script("flower-superlink"), "--insecure", "--host", LOOPBACK,
                "--port", str(self.port), "--disable-runtime-dependency-installation",
                *(["--simulation"] if self.simulation else []),
            ], env, self.home, self.logs / "superlink.log")
            self._wait_port(timeout)
            for i, node_port in enumerate(self.node_ports):
                config = write_toml(self.home / f"node-{i}.toml", node_config(i, self.supernodes, self.node_extra))
                self.nodes.append(_start(f"supernode-{i}", [
                    script("flower-supernode"), "--insecure", "--superlink", self.address,
                    "--host", LOOPBACK, "--port", str(node_port), "--node-config", str(config),
                ], env, self.home, self.logs / f"supernode-{i}.log"))
            self.save_state()
            if wait_nodes and not self.simulation:
                self.control.wait_for_nodes(self.supernodes, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.superlink.alive():
                raise CmiError(f"the SuperLink exited at start (is port {self.port} in use?); see {self.superlink.log}.")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() >= deadline:
                    raise CmiError(f"the SuperLink did not listen on {self.address} within {timeout:.0f} s; "
                                   f"see {self.superlink.log}.") from None
                time.sleep(0.2)

    def kill_supernode(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to SuperNode ``index``'s process group (the node, its SuperExec and any
        ClientApp it runs), as when its machine is lost."""
        signal_groups(self.nodes[index].groups(), sig)

    def clientapps(self, index: int) -> list[int]:
        """Pids of the ClientApp processes SuperNode ``index`` runs right now."""
        return [pid for pid in group_members(self.nodes[index].pid) if "flwr-clientapp" in process_cmdline(pid)]

    def stop(self, grace: float = 10.0) -> None:
        """Stop the SuperNodes (they sign off), then the SuperLink, and wait until no process of
        their groups (SuperExecs, ServerApp, ClientApps included) is left; a CmiError lists the
        pids that survived SIGKILL."""
        left = stop_processes(self.nodes, grace)
        if self.superlink is not None:
            left += stop_processes([self.superlink], grace)
        (self.home / STATE_FILE).unlink(missing_ok=True)
        if left:
            raise CmiError(f"Flower processes {left} did not exit after SIGKILL; check them with `ps -o pid,stat,args -p "
                           f"{','.join(map(str, left))}`.")

    # ------------------------------------------------------------------ detached use (`cmi flower up/down`)

    def save_state(self) -> None:
        atomic_write_json(self.home / STATE_FILE, {
            "address": self.address,
            "superlink": self.superlink.pid if self.superlink else None,
            "supernodes": [p.pid for p in self.nodes],
            "logs": str(self.logs),
        })

    @classmethod
    def attach(cls, home: str | os.PathLike) -> "LoopbackDeployment":
        """The deployment whose state file is in ``home`` (started by another process), to stop it."""
        home = Path(home).resolve()
        path = home / STATE_FILE
        if not path.is_file():
            raise CmiError(f"no Flower deployment is recorded in {home}; start one with `cmi flower up`.")
        state = json.loads(path.read_text(encoding="utf-8"))
        deployment = cls.__new__(cls)
        deployment.home, deployment.node_extra = home, {}
        deployment.port = int(state["address"].rsplit(":", 1)[1])
        deployment.node_ports = []
        deployment.supernodes = len(state["supernodes"])
        deployment.control = FlowerControl(home, state["address"])
        logs = Path(state["logs"])
        deployment.superlink = FlowerProcess("superlink", state["superlink"], logs / "superlink.log") \
            if state["superlink"] else None
        deployment.nodes = [FlowerProcess(f"supernode-{i}", pid, logs / f"supernode-{i}.log")
                            for i, pid in enumerate(state["supernodes"])]
        return deployment
