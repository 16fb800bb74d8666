"""The runs of a workspace at a glance (`cmi runs`, `cmi experiment status`): what each run is,
how far it got and its test accuracy per path at the best round on validation.

Read from each run's manifest and metrics log only (no torch, no predictions), so listing is
fast; `cmi report` recomputes everything from the predictions instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipelines.artifacts import MANIFEST_NAME, RUN_METRICS, ArtifactError, Workspace, load_artifact
from pipelines.experiments.record import process_alive

#: statuses a listed run can have: a run manifest's, and ``interrupted`` for a ``running`` run
#: whose training process is gone
RUN_LIST_STATUSES = ("running", "complete", "diverged", "failed", "interrupted")


@dataclass(frozen=True)
class RunSummary:
    """One run: settings that tell runs apart, progress, and ``accuracy`` (eval path -> test
    accuracy, None where undefined) at ``best_round``, empty before the first evaluation."""

    name: str
    method: str
    dataset: str
    partition: str
    seed: int | None
    engine: str
    status: str
    rounds_done: int
    rounds_total: int | None
    best_round: int | None
    paths: list[str] = field(default_factory=list)
    accuracy: dict[str, float | None] = field(default_factory=dict)
    created_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_run(directory: Path) -> RunSummary | None:
    """The summary of the run in ``directory``; None when it holds no readable run manifest."""
    try:
        manifest = load_artifact(directory, "run").manifest
    except ArtifactError:
        return None
    status = manifest.get("status", "running")
    if status == "running" and "pid" in manifest and not process_alive(manifest["pid"], manifest.get("host")):
        status = "interrupted"
    best = manifest.get("best_round")
    accuracy: dict[str, float | None] = {}
    if best is not None:
        for record in _read_metrics(directory / RUN_METRICS):
            if record.get("round") == best and record.get("test"):
                accuracy = dict(record["test"]["accuracy"])
    params = manifest.get("params", {})
    return RunSummary(
        name=directory.name, method=manifest.get("method", params.get("method", "?")),
        dataset=manifest.get("dataset", "?"), partition=manifest.get("partition", "?"), seed=params.get("seed"),
        engine=manifest.get("engine", params.get("engine", "local")), status=status,
        rounds_done=int(manifest.get("rounds_done") or 0),
        rounds_total=manifest.get("rounds_total", params.get("rounds")), best_round=best,
        paths=list(manifest.get("eval_paths", [])), accuracy=accuracy, created_at=manifest.get("created_at"),
    )


def list_runs(workspace: Workspace, *, methods: Sequence[str] = (), partitions: Sequence[str] = (),
              statuses: Sequence[str] = (), names: Sequence[str] | None = None) -> list[RunSummary]:
    """Summaries of the workspace's runs by name, keeping those whose method, partition and
    status are among the given ones (each filter only when given) and, with ``names``, those
    runs only (in that order)."""
    root = workspace.kind_dir("run")
    if names is None:
        names = sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_NAME}")) if root.is_dir() else []
    out = []
    for name in names:
        summary = summarize_run(root / name)
        if summary is None:
            continue
        if (methods and summary.method not in methods) or (partitions and summary.partition not in partitions) \
                or (statuses and summary.status not in statuses):
            continue
        out.append(summary)
    return out


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:   # a line cut short by a kill
            continue
    return records
