"""Running an experiment: its cells in worker processes that split the cores, statuses in the
experiment manifest.

Every cell is an ordinary run directory trained by the ordinary machinery
(:func:`~pipelines.training.session.open_session` and
:func:`~pipelines.training.session.run_engine`), so a cell that is already complete with the same
settings is skipped (its run directory is not touched) and an interrupted one continues from its
last checkpoint. Each cell runs in a fresh process (``spawn``): a crash, an out-of-memory kill or
a failing cell takes down that cell only; its message is recorded in the manifest and its output
in ``experiments/<name>/logs/<run>.log``. ``jobs`` processes run at a time with ``cores // jobs``
torch threads each (:func:`~pipelines.training.threads.split_cores`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

from pipelines.artifacts import MANIFEST_NAME, ArtifactError, Workspace, atomic_write_text, load_artifact
from pipelines.errors import CmiError
from pipelines.experiments.record import EXPERIMENT_FILE, Cell, Experiment, load_experiment, write_experiment
from pipelines.experiments.spec import ExperimentSpec, PlannedCell, expand

LOGS_DIR = "logs"
#: seconds a worker gets to stop cleanly after Ctrl-C (a Flower cell stops its deployment) before it is killed
STOP_GRACE_S = 30.0


class Display(Protocol):
    """What the runner tells a progress display (see :class:`~pipelines.experiments.display.GridDisplay`)."""

    def start(self, cells: Sequence[Cell], workers: int, threads: int) -> None: ...

    def cell_started(self, index: int) -> None: ...

    def cell_rounds(self, index: int, rounds_done: int, total: int | None, accuracy: dict[str, Any] | None) -> None:
        """Cell ``index`` has ``rounds_done`` rounds (of ``total``, None when unchanged); ``accuracy``
        is the last round's test accuracy per path, when it was evaluated."""

    def cell_finished(self, index: int, cell: Cell) -> None: ...

    def close(self) -> None: ...


class NoDisplay:
    """A display that shows nothing (``--quiet``)."""

    def start(self, cells, workers, threads) -> None: ...

    def cell_started(self, index) -> None: ...

    def cell_rounds(self, index, rounds_done, total, accuracy) -> None: ...

    def cell_finished(self, index, cell) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CellJob:
    """What a worker process needs to train one cell (plain data: it crosses a process boundary)."""

    index: int
    workspace: str
    run: str
    partition: str
    config: dict[str, Any]
    threads: int
    force: bool
    log: str


def run_experiment(workspace: Workspace, spec: ExperimentSpec, *, jobs: int = 1, cores: int | None = None,
                   force: bool = False, display: Display | None = None) -> Experiment:
    """Run every cell of ``spec`` not yet complete, ``jobs`` at a time on ``cores`` cores
    (default: those available), and return the experiment as recorded. ``force`` trains every
    cell again from scratch. A cell whose run exists with other settings (the file changed since)
    fails with a message naming the fix. Ctrl-C stops the workers (their runs stay resumable),
    records the experiment as interrupted and re-raises KeyboardInterrupt."""
    from pipelines.training.threads import available_cores, split_cores

    display = display or NoDisplay()
    directory = workspace.artifact_dir("experiment", spec.name)
    recorded: list[str] = []
    if (directory / MANIFEST_NAME).is_file():
        recorded = list(load_artifact(directory, "experiment").params.get("partitions", []))
    planned = expand(spec, workspace, recorded)
    params = {**spec.params(), "partitions": list(dict.fromkeys(p.partition.name for p in planned))}
    cells = [_initial(workspace, p, force) for p in planned]
    workers, threads = split_cores(jobs, cores or available_cores())
    directory.mkdir(parents=True, exist_ok=True)
    resolved = replace(spec, partitions=tuple(params["partitions"]))
    atomic_write_text(directory / EXPERIMENT_FILE, resolved.to_toml(
        f"Experiment {spec.name} as run: `cmi experiment run {EXPERIMENT_FILE}` (from this folder) runs it again."))
    record = _Recorder(directory, params, cells, {"jobs": jobs, "workers": workers, "threads_per_job": threads})
    record.write("running")
    workspace.set_latest("experiment", spec.name)

    display.start(cells, workers, threads)
    todo = deque(i for i, c in enumerate(cells) if c.status == "pending")
    try:
        _run_cells(workspace, planned, todo, record, display, workers=workers, threads=threads, force=force,
                   logs=directory / LOGS_DIR)
    except BaseException:
        record.write("interrupted")
        raise
    finally:
        display.close()
    record.write("complete" if all(c.status == "complete" for c in record.cells) else "failed")
    return load_experiment(workspace, directory)


class _Recorder:
    """The experiment's cells and manifest: every status change is written at once."""

    def __init__(self, directory: Path, params: dict[str, Any], cells: list[Cell], extra: dict[str, Any]):
        self.directory, self.params, self.cells, self.extra = directory, params, cells, extra

    def set(self, index: int, status: str, error: str | None = None) -> Cell:
        self.cells[index] = replace(self.cells[index], status=status, error=error)
        self.write("running")
        return self.cells[index]

    def write(self, status: str) -> None:
        write_experiment(self.directory, self.params, self.cells, status, self.extra)


def _initial(workspace: Workspace, planned: PlannedCell, force: bool) -> Cell:
    """``planned``'s cell with status ``complete`` when its run is finished with the same
    settings (and not ``force``), ``failed`` when its run exists with other settings, else
    ``pending``."""
    from pipelines.training.session import run_identity

    cell = planned.cell
    try:
        manifest = load_artifact(workspace.artifact_dir("run", cell.run), "run").manifest
    except ArtifactError:
        return cell
    if force:
        return cell
    if manifest.get("identity") != run_identity(planned.config, planned.partition):
        return replace(cell, status="failed", error=(
            f"run {cell.run} exists with other settings or inputs (the experiment or the partition changed since "
            "it ran); give the experiment another name (--name), or pass --force to train every cell again."))
    return replace(cell, status="complete") if manifest.get("status") == "complete" else cell


def _run_cells(workspace: Workspace, planned: list[PlannedCell], todo: deque, record: _Recorder,
               display: Display, *, workers: int, threads: int, force: bool, logs: Path) -> None:
    context = mp.get_context("spawn")
    events = context.Queue()
    running: dict[int, Any] = {}
    ended: dict[int, tuple[str, str | None]] = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                index = todo.popleft()
                cell = planned[index].cell
                job = CellJob(index, str(workspace.root), cell.run, cell.partition, planned[index].config.to_dict(),
                              threads, force, str(logs / f"{cell.run}.log"))
                process = context.Process(target=run_cell, args=(job, events), name=f"cmi-cell-{cell.run}")
                process.start()
                running[index] = process
                record.set(index, "running")
                display.cell_started(index)
            _drain(events, display, ended, timeout=0.5)
            for index, process in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                _drain(events, display, ended, timeout=0)
                status, error = ended.pop(index, (None, None))
                if status is None:
                    log = logs / f"{planned[index].cell.run}.log"
                    status, error = "failed", (f"the worker process ended with exit code {process.exitcode} before "
                                               f"reporting (killed? out of memory?); see {log}. Run the experiment "
                                               "again to resume the cell.")
                del running[index]
                display.cell_finished(index, record.set(index, status, error))
    except BaseException:   # Ctrl-C (or a failure of this process): no worker is left behind
        _stop(running)
        for index in running:
            record.cells[index] = replace(record.cells[index], status="interrupted")
        raise


def _drain(events, display: Display, ended: dict, timeout: float) -> None:
    """Pass the workers' queued events on to ``display``; record the ``end`` ones in ``ended``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic())) if timeout else events.get_nowait()
        except queue_module.Empty:
            return
        kind, index, *rest = event
        if kind == "start":
            display.cell_rounds(index, rest[0], rest[1], None)
        elif kind == "round":
            display.cell_rounds(index, rest[0], None, rest[1])
        elif kind == "end":
            ended[index] = (rest[0], rest[1])


def _stop(running: dict[int, Any]) -> None:
    """Let every worker stop cleanly (SIGINT, as Ctrl-C), kill those that do not within the grace time."""
    for process in running.values():
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in running.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


# ---------------------------------------------------------------------------- the worker process


def run_cell(job: CellJob, events) -> None:
    """A worker process: train ``job``'s cell (continuing its run if it exists) and put
    ``("end", index, status, error)`` on ``events`` (rounds go there too, see
    :class:`~pipelines.training.progress.QueueProgress`); output goes to the cell's log."""
    _redirect_output(Path(job.log))
    signal.signal(signal.SIGINT, _interrupt_once)
    status, error = "failed", None
    try:
        status = _train_cell(job, events)
    except KeyboardInterrupt:
        status = "interrupted"
    except CmiError as exc:
        from pipelines.training.rounds import TrainingDiverged

        status, error = ("diverged" if isinstance(exc, TrainingDiverged) else "failed"), str(exc)
        print(f"error: {exc}", file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - any failure is this cell's, reported and logged
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc} (traceback in {job.log})"
    events.put(("end", job.index, status, error))


def _interrupt_once(signum, frame) -> None:
    """The first SIGINT (the terminal's Ctrl-C, or the runner's) stops the cell; later ones are
    ignored so that they cannot cut its clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _train_cell(job: CellJob, events) -> str:
    from pipelines.training.config import resolve_config
    from pipelines.training.progress import QueueProgress
    from pipelines.training.session import open_session, run_engine

    workspace = Workspace(job.workspace)
    config = resolve_config(job.config)
    session = open_session(workspace, config, partition=job.partition, name=job.run, force=job.force)
    options = None
    if config.engine == "flower":
        from pipelines.engines.flower.run import FlowerOptions

        options = FlowerOptions()
    run_engine(session, QueueProgress(events, job.index), threads=job.threads, flower_options=options)
    return session.run.artifact().manifest.get("status", "failed")


def _redirect_output(log: Path) -> None:
    """Send this process's stdout and stderr (file descriptors too, for child processes and C
    libraries) to ``log``, appending."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
