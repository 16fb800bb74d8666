"""The numbers of a report: every value recomputed from a run's saved predictions and partition.

Each prediction snapshot (``best``: the round best on validation, ``final``: the last round) of
a run becomes a flat mapping :class:`Key` -> value. Tables, JSON, CSV and HTML are all views of
these mappings, and a comparison's deltas are differences of the same keys, so every output
format shows the same numbers. Only the class temperatures (logged by FedCMI during training),
the client selection (cmsfed, :attr:`RunData.selection`) and the curves over rounds come from
``metrics.jsonl``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from pipelines.artifacts import Workspace
from pipelines.errors import CmiError
from pipelines.reports.load import SNAPSHOTS, RunData, load_run
from pipelines.reports.metrics import client_stats, paired_accuracy_gap, path_metrics

Value = float | int | str


class Key(NamedTuple):
    """Address of one reported number.

    section: ``summary`` (per path), ``per_class`` (recall per path and class; support and
    temperature per class), ``per_client`` (per client id) or ``clients`` (statistics over clients;
    ``client`` holds a modality group such as ``audio+visual`` for that group's rows, else "").
    """

    section: str
    path: str = ""
    cls: str = ""
    client: str = ""
    metric: str = ""


#: summary metrics per path, in table order (``worst_class`` is the worst class's name)
SUMMARY_METRICS = (
    "rows", "coverage", "accuracy", "balanced_accuracy", "macro_f1", "worst_class", "worst_class_recall",
    "recall_std", "recall_gap", "fused_minus_path",
)


@dataclass(frozen=True)
class SnapshotReport:
    """The recomputed numbers of one prediction snapshot of a run."""

    name: str
    round: int | None
    file: str
    models: int
    client_round: int | None
    values: dict[Key, Value]


@dataclass(frozen=True)
class RunReport:
    run: RunData
    snapshots: dict[str, SnapshotReport]

    @property
    def name(self) -> str:
        return self.run.name


@dataclass(frozen=True)
class Report:
    """One or more runs; in a comparison ``runs[0]`` is the baseline and deltas are
    ``other − baseline``. ``snapshots`` and ``paths`` are the selections the user asked for."""

    runs: list[RunReport]
    compare: bool
    snapshots: tuple[str, ...]
    paths: list[str]

    @property
    def baseline(self) -> RunReport | None:
        return self.runs[0] if self.compare else None

    def values(self, run: RunReport, snapshot: str) -> dict[Key, Value]:
        """``run``'s numbers of ``snapshot`` restricted to the selected paths (empty if absent)."""
        snap = run.snapshots.get(snapshot)
        if snap is None:
            return {}
        return {k: v for k, v in snap.values.items() if not k.path or k.path in self.paths}

    def deltas(self, run: RunReport, snapshot: str) -> dict[Key, float]:
        """``run − baseline`` for every numeric key both have (empty outside a comparison)."""
        pairs = ((k, self.delta(run, snapshot, k)) for k in self.values(run, snapshot))
        return {k: d for k, d in pairs if d is not None}

    def value(self, run: RunReport, snapshot: str, key: Key) -> Value | None:
        snap = run.snapshots.get(snapshot)
        return None if snap is None else snap.values.get(key)

    def delta(self, run: RunReport, snapshot: str, key: Key) -> float | None:
        """``run − baseline`` for a numeric key (None outside a comparison, or when either lacks it
        or it is NaN)."""
        if not self.compare or run is self.runs[0]:
            return None
        a, b = self.value(run, snapshot, key), self.value(self.runs[0], snapshot, key)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return None
        difference = float(a) - float(b)
        return None if math.isnan(difference) else difference


def snapshot_report(run: RunData, snapshot: str) -> SnapshotReport | None:
    """Recompute every number of ``snapshot`` from the run's prediction files (None if absent)."""
    test = run.test.get(snapshot)
    if test is None:
        return None
    n = len(run.classes)
    values: dict[Key, Value] = {}
    for cls, count in zip(run.classes, test.support(n)):
        values[Key("per_class", cls=cls, metric="support")] = int(count)
    fused = test.preds.get("fused")
    for path, preds in test.preds.items():
        pm = path_metrics(test.labels, preds, n)
        gap = paired_accuracy_gap(test.labels, fused, preds) if fused is not None and path != "fused" else math.nan
        summary = {
            "rows": pm.rows, "coverage": pm.coverage, "accuracy": pm.accuracy,
            "balanced_accuracy": pm.balanced_accuracy, "macro_f1": pm.macro_f1,
            "worst_class": run.classes[pm.worst_class] if pm.worst_class is not None else "",
            "worst_class_recall": pm.worst_class_recall, "recall_std": pm.recall_std,
            "recall_gap": pm.recall_gap, "fused_minus_path": gap,
        }
        for metric in SUMMARY_METRICS:
            values[Key("summary", path=path, metric=metric)] = summary[metric]
        for cls, recall in zip(run.classes, pm.recall):
            values[Key("per_class", path=path, cls=cls, metric="recall")] = float(recall)
    line = run.metrics_at(test.round)
    temperatures = line.get("temperatures") if line else None
    if temperatures is not None and len(temperatures) == n:
        for cls, t in zip(run.classes, temperatures):
            values[Key("per_class", cls=cls, metric="temperature")] = float(t)
    clients = run.clients.get(snapshot)
    if clients is not None:
        values.update(_client_values(run, clients.clients, clients.labels, clients.preds))
    return SnapshotReport(
        name=snapshot,
        round=test.round if test.round is not None else _manifest_round(run, snapshot),
        file=test.file,
        models=test.num_models,
        client_round=clients.round if clients is not None else None,
        values=values,
    )


def _manifest_round(run: RunData, snapshot: str) -> int | None:
    return run.best_round if snapshot == "best" else run.rounds_done


def _client_values(run: RunData, clients: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> dict[Key, Value]:
    stats = client_stats(clients, labels, preds)
    values: dict[Key, Value] = {
        Key("clients", metric="clients"): int(stats.clients.size),
        Key("clients", metric="mean"): stats.mean,
        Key("clients", metric="std"): stats.std,
        Key("clients", metric="worst10_mean"): stats.worst10_mean,
        Key("clients", metric="worst10_count"): stats.worst10_count,
    }
    groups = np.array([run.partition.modality_label(int(c)) for c in stats.clients]) if run.partition else None
    for i, cid in enumerate(stats.clients):
        client = str(int(cid))
        values[Key("per_client", client=client, metric="samples")] = int(stats.samples[i])
        values[Key("per_client", client=client, metric="accuracy")] = float(stats.accuracy[i])
        values[Key("per_client", client=client, metric="modalities")] = groups[i] if groups is not None else "?"
    if groups is not None:
        for group in dict.fromkeys(groups):
            members = groups == group
            values[Key("clients", client=group, metric="clients")] = int(members.sum())
            values[Key("clients", client=group, metric="mean")] = float(stats.accuracy[members].mean())
    return values


def build_report(
    workspace: Workspace,
    refs: Sequence[str | Path],
    *,
    compare: bool = False,
    snapshots: Sequence[str] = SNAPSHOTS,
    paths: Sequence[str] | None = None,
) -> Report:
    """Load and recompute the runs ``refs`` (the latest run when empty).

    With ``compare`` the first run is the baseline; a single ref is then compared with the latest
    run. ``paths`` restricts the eval paths shown (default: every path of every run).
    """
    refs = list(refs)
    if compare and len(refs) == 1:
        latest = workspace.resolve("run")
        if latest.path.resolve() == workspace.resolve("run", refs[0]).path.resolve():
            raise CmiError(
                f"--compare needs two runs, and {refs[0]!r} is the latest run: name the baseline first and "
                "the run(s) to compare after it, e.g. `cmi report --compare FEDAVG_RUN FEDCMI_RUN`."
            )
        refs.append(latest.path)
    if compare and len(refs) < 2:
        raise CmiError("--compare needs the runs to compare: `cmi report --compare BASELINE_RUN OTHER_RUN...`.")
    runs = [load_run(workspace, ref) for ref in (refs or [None])]
    if compare:
        check_same_classes(runs, "--compare")
    reports = [run_report(run, snapshots) for run in runs]
    return Report(reports, compare, tuple(snapshots), select_paths(runs, paths))


def run_report(run: RunData, snapshots: Sequence[str]) -> RunReport:
    """``run`` with the recomputed numbers of each of ``snapshots`` it has predictions for."""
    return RunReport(run, {s: r for s in snapshots if (r := snapshot_report(run, s)) is not None})


def check_same_classes(runs: Sequence[RunData], option: str) -> None:
    """Raise a :class:`CmiError` naming ``option`` unless every run has the first run's classes."""
    for run in runs[1:]:
        if run.classes != runs[0].classes:
            raise CmiError(
                f"runs {runs[0].name!r} and {run.name!r} have different classes "
                f"({runs[0].classes} vs {run.classes}): {option} needs runs trained on the same dataset."
            )


def select_paths(runs: Sequence[RunData], paths: Sequence[str] | None) -> list[str]:
    """Every eval path of ``runs`` (first-seen order), restricted to ``paths`` when given; an
    unknown path is a :class:`CmiError` listing the known ones."""
    available = list(dict.fromkeys(p for run in runs for p in run.eval_paths))
    if not paths:
        return available
    unknown = [p for p in paths if p not in available]
    if unknown:
        raise CmiError(f"unknown --path {', '.join(unknown)}: these runs evaluate {', '.join(available)}.")
    return [p for p in available if p in paths]
