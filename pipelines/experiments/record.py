"""The experiment artifact (`experiments/<name>/`, written by `cmi experiment run`) and reading it.

``manifest.json`` params hold what the experiment is: its ``name``, ``methods``, ``seeds``,
``partitions``, ``grid`` (dotted config key -> list of values), ``base`` (the settings every
cell shares, dotted keys) and ``cells``, one per run::

    {"run": "exp-fedcmi-kappa1-s0", "method": "fedcmi", "seed": 0, "partition": "synthetic-...",
     "overrides": {"fedcmi.kappa": 1}, "status": "complete"}

A cell's ``status`` is ``pending`` (not started), ``running``, ``complete``, ``failed``,
``diverged`` or ``interrupted``; a failed cell also has ``error`` (the message). The manifest
extra holds the experiment's own ``status`` (``running``, ``complete`` when every cell is,
``failed`` when it ended with a cell not complete, ``interrupted``), the ``jobs`` and
``threads_per_job`` it ran with and the runner's ``pid`` and ``host``. The runner rewrites the
manifest (atomically) whenever a cell changes status; ``experiment.toml`` beside it is the
experiment file as resolved, so ``cmi experiment run experiments/<name>/experiment.toml`` runs it
again.

This module imports neither torch nor the training code: reports and listings use it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import ArtifactError, Workspace, load_artifact, write_manifest

EXPERIMENT_FILE = "experiment.toml"
CELL_STATUSES = ("pending", "running", "complete", "failed", "diverged", "interrupted")
#: statuses a cell ends a runner's pass with; the others mean it still has rounds to train
FINAL_STATUSES = ("complete", "failed", "diverged")


@dataclass(frozen=True)
class Cell:
    """One run of an experiment: ``method`` with ``seed`` on ``partition``, the base settings
    changed by ``overrides`` (dotted keys), in run directory ``runs/<run>``."""

    run: str
    method: str
    seed: int
    partition: str
    overrides: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    error: str | None = None

    @property
    def name(self) -> str:
        """The run name (same as :attr:`run`)."""
        return self.run

    def to_dict(self) -> dict[str, Any]:
        out = {"run": self.run, "method": self.method, "seed": self.seed, "partition": self.partition,
               "overrides": dict(self.overrides), "status": self.status}
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(d["run"], d["method"], int(d["seed"]), d["partition"], dict(d.get("overrides") or {}),
                   d.get("status", "pending"), d.get("error"))


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment artifact: its ``cells`` (grid order) with their statuses as of now
    (see :func:`load_experiment`), and the grid that made them."""

    name: str
    path: Path
    workspace: Workspace
    status: str
    methods: list[str]
    seeds: list[int]
    partitions: list[str]
    grid: dict[str, list[Any]]
    base: dict[str, Any]
    cells: list[Cell]
    manifest: dict[str, Any]

    def run_path(self, cell: Cell) -> Path:
        """The run directory of ``cell`` (it may not exist yet)."""
        return self.workspace.artifact_dir("run", cell.run)

    def counts(self) -> dict[str, int]:
        """Cells per status, every status of :data:`CELL_STATUSES` present (0 when none)."""
        out = dict.fromkeys(CELL_STATUSES, 0)
        for cell in self.cells:
            out[cell.status] += 1
        return out


def load_experiment(workspace: Workspace, name_or_path: str | os.PathLike | None = None) -> Experiment:
    """The experiment ``name_or_path`` (a name in ``workspace``, a directory, or None for the
    latest), its cells' statuses brought up to date: a cell whose run directory says ``complete``
    is complete (e.g. finished by hand with `cmi train --resume`), and when the runner that
    wrote the manifest is gone (killed) its ``running`` cells and itself read ``interrupted``.
    Raises :class:`~pipelines.artifacts.ArtifactError` naming `cmi experiment run` when there
    is no such experiment."""
    artifact = workspace.resolve("experiment", name_or_path)
    manifest, params = artifact.manifest, artifact.params
    status = manifest.get("status", "running")
    runner_gone = status == "running" and not process_alive(manifest.get("pid"), manifest.get("host"))
    if runner_gone:
        status = "interrupted"
    cells = []
    for recorded in params.get("cells", []):
        cell = Cell.from_dict(recorded)
        live = _run_status(workspace, cell.run)
        if live == "complete":
            cell = _with_status(cell, "complete")
        elif runner_gone and cell.status == "running":
            cell = _with_status(cell, "interrupted")
        cells.append(cell)
    return Experiment(
        name=artifact.name, path=artifact.path, workspace=workspace, status=status,
        methods=list(params.get("methods", [])), seeds=list(params.get("seeds", [])),
        partitions=list(params.get("partitions", [])), grid=dict(params.get("grid", {})),
        base=dict(params.get("base", {})), cells=cells, manifest=manifest,
    )


def write_experiment(directory: Path, params: dict[str, Any], cells: list[Cell], status: str,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """(Re)write the experiment manifest: ``params`` plus the ``cells``, the experiment
    ``status`` and this process as its runner."""
    return write_manifest(directory, "experiment", {**params, "cells": [c.to_dict() for c in cells]}, extra={
        **extra, "status": status, "pid": os.getpid(), "host": socket.gethostname()})


def _with_status(cell: Cell, status: str) -> Cell:
    return Cell(cell.run, cell.method, cell.seed, cell.partition, cell.overrides, status,
                cell.error if status == "failed" else None)


def _run_status(workspace: Workspace, run: str) -> str | None:
    try:
        return load_artifact(workspace.artifact_dir("run", run), "run").manifest.get("status")
    except ArtifactError:  # no run directory yet, or a damaged one: the recorded status stands
        return None


def process_alive(pid: Any, host: Any) -> bool:
    """Whether process ``pid`` on ``host`` still runs (as far as this machine can tell: a process
    on another host is assumed alive, a missing pid dead)."""
    if not isinstance(pid, int):
        return False
    if host != socket.gethostname():
        return True   # cannot be checked from here: trust the manifest
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
