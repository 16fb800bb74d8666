"""Reading a run directory (and its partition) for a report, tolerating unfinished runs.

A run is *complete* when its manifest status is ``complete`` and ``predictions/test-final.parquet``
exists. Anything less still loads: what exists is returned with :attr:`RunData.notes` saying
what is missing, so a report of a running, failed or diverged run shows the best-so-far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.artifacts import (
    KINDS, PARTITION_STATS, RUN_METRICS, RUN_PREDICTIONS_DIR, Artifact, ArtifactError,
    Workspace, eval_paths,
)
from pipelines.partitioning import read_partition

#: prediction snapshots a run saves, in report order: best on validation, then last round
SNAPSHOTS = ("best", "final")
SNAPSHOT_LABELS = {"best": "test-best", "final": "test-final"}


def _recreate_hint(run: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{run}: {what}; re-create the run with `cmi train`.")


@dataclass(frozen=True)
class TestPredictions:
    """``predictions/test-<snapshot>.parquet``: one row per test sample (per client model for the
    method ``local``, whose ``models`` column says which). ``preds`` maps an eval path to int
    predictions, -1 where the path is undefined."""

    file: str
    round: int | None
    ids: np.ndarray
    labels: np.ndarray
    preds: dict[str, np.ndarray]
    models: np.ndarray | None

    def support(self, num_classes: int) -> np.ndarray:
        """Distinct test samples per class (not rows: ``local`` repeats each sample per model)."""
        _, first = np.unique(self.ids, return_index=True)
        return np.bincount(self.labels[first], minlength=num_classes)

    @property
    def num_models(self) -> int:
        return 1 if self.models is None else int(np.unique(self.models).size)


@dataclass(frozen=True)
class ClientPredictions:
    """``predictions/clients-<snapshot>.parquet``: the model's routed prediction on every
    client's own training samples."""

    file: str
    round: int | None
    clients: np.ndarray
    labels: np.ndarray
    preds: np.ndarray


@dataclass(frozen=True)
class PartitionInfo:
    """What a report uses of the run's partition: which modalities each client holds, the
    clients x classes counts and the share of each client's samples holding each modality
    (clients x modalities, from stats.json, or the held flags when it lacks them): what the
    partition heatmap is drawn from."""

    name: str
    path: Path
    num_clients: int
    client_modalities: dict[str, np.ndarray]
    class_counts: np.ndarray | None
    modality_share: np.ndarray | None

    def modality_label(self, client: int) -> str:
        held = [m for m, has in self.client_modalities.items() if client < has.size and has[client]]
        return "+".join(held) if held else "none"


@dataclass(frozen=True)
class SelectionRound:
    """One logged round of a method that chooses per round which clients train and which of
    them train only one modality (``selects_modalities``: cmsfed), from its metrics.jsonl line:
    the clients trained, those that trained only each modality (``trained_only``) and the
    server's global imbalance ρ̄ (``server.global_imbalance``, None when unknown)."""

    round: int
    clients: list[int]
    trained_only: dict[str, list[int]]
    global_imbalance: float | None

    @property
    def single_modality(self) -> int:
        """How many of the round's clients trained only one modality."""
        return sum(len(ids) for ids in self.trained_only.values())


@dataclass
class RunData:
    """Everything a report reads from one run directory."""

    artifact: Artifact
    classes: list[str]
    modalities: list[str]
    eval_paths: list[str]
    status: str
    method: str
    dataset: str
    partition_name: str | None
    rounds_done: int | None
    rounds_total: int | None
    best_round: int | None
    metrics: list[dict[str, Any]]
    test: dict[str, TestPredictions]
    clients: dict[str, ClientPredictions]
    partition: PartitionInfo | None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def config(self) -> dict[str, Any]:
        """The resolved training config the run was made with (its manifest params, as config.json)."""
        return self.artifact.params

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if isinstance(seed, int) else None

    def setting(self, key: str) -> Any:
        """The value of ``key`` for this run: ``method``, ``dataset``, ``partition``, ``status``, or a
        dotted config key (``seed``, ``rounds``, ``fedcmi.kappa``, ``train.lr``...); None when the
        run's config has no such key (e.g. ``fedcmi.kappa`` of a FedAvg run)."""
        if key in ("method", "dataset", "status"):
            return getattr(self, key)
        if key == "partition":
            return self.partition_name
        value: Any = self.config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    @property
    def complete(self) -> bool:
        return self.status == "complete" and "final" in self.test

    @property
    def selection(self) -> list[SelectionRound]:
        """The client-selection decisions of every logged round that carries ``trained_only``
        (empty for a method that does not select modalities)."""
        return [
            SelectionRound(int(line["round"]), sorted(line.get("clients") or []),
                           {m: sorted(ids) for m, ids in (line["trained_only"] or {}).items()},
                           (line.get("server") or {}).get("global_imbalance"))
            for line in self.metrics if "trained_only" in line
        ]

    def metrics_at(self, round_: int | None) -> dict[str, Any] | None:
        """The metrics.jsonl line of ``round_`` (None when that round was not logged)."""
        return next((line for line in self.metrics if line.get("round") == round_), None)


def load_run(workspace: Workspace, ref: str | Path | None = None) -> RunData:
    """Load the run ``ref`` (name or path; the latest run when None) for a report.

    Raises :class:`ArtifactError` naming ``cmi train`` when ``ref`` is not a run or its files are
    corrupt; missing files of an unfinished run only add :attr:`RunData.notes`.
    """
    artifact = workspace.resolve("run", ref)
    m = artifact.manifest
    classes = m.get("classes")
    if not classes:
        raise _recreate_hint(artifact.path, "the run manifest lists no classes")
    modalities = list(m.get("modalities") or [])
    paths = list(m.get("eval_paths") or eval_paths(modalities))
    notes: list[str] = []
    metrics = _read_metrics(artifact.path / RUN_METRICS, notes)
    test, clients = {}, {}
    for snap in SNAPSHOTS:
        test_file = artifact.path / RUN_PREDICTIONS_DIR / f"test-{snap}.parquet"
        if test_file.is_file():
            test[snap] = _read_test(artifact.path, test_file, paths)
        client_file = artifact.path / RUN_PREDICTIONS_DIR / f"clients-{snap}.parquet"
        if client_file.is_file():
            clients[snap] = _read_clients(artifact.path, client_file)
    run = RunData(
        artifact=artifact,
        classes=list(classes),
        modalities=modalities,
        eval_paths=paths,
        status=str(m.get("status", "unknown")),
        method=str(m.get("method", "?")),
        dataset=str(m.get("dataset", "?")),
        partition_name=m.get("partition"),
        rounds_done=m.get("rounds_done"),
        rounds_total=m.get("rounds_total"),
        best_round=m.get("best_round"),
        metrics=metrics,
        test=test,
        clients=clients,
        partition=None,
        notes=notes,
    )
    run.partition = _find_partition(workspace, run)
    _note_completeness(run)
    return run


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl lines by round; a resumed run's repeated round keeps its last line and an
    unreadable line (e.g. cut by a kill) is skipped with a note."""
    if not path.is_file():
        notes.append(f"{RUN_METRICS} is missing: no curves over rounds.")
        return []
    by_round: dict[int, dict[str, Any]] = {}
    bad = 0
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            by_round[int(line["round"])] = line
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        notes.append(f"{bad} unreadable line(s) of {RUN_METRICS} skipped.")
    return [by_round[r] for r in sorted(by_round)]


def _round_metadata(table) -> int | None:
    value = (table.schema.metadata or {}).get(b"round")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _read_parquet(run: Path, path: Path, required: list[str]):
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise _recreate_hint(run, f"{path.relative_to(run)} is unreadable ({exc})") from exc
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise _recreate_hint(run, f"{path.relative_to(run)} lacks column(s) {', '.join(missing)}")
    return table


def _int_column(table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.int64)


def _read_test(run: Path, path: Path, paths: list[str]) -> TestPredictions:
    pred_columns = [f"pred_{p}" for p in paths]
    table = _read_parquet(run, path, ["id", "label", *pred_columns])
    return TestPredictions(
        file=str(path.relative_to(run)),
        round=_round_metadata(table),
        ids=table.column("id").to_numpy(zero_copy_only=False).astype(str),
        labels=_int_column(table, "label"),
        preds={p: _int_column(table, c) for p, c in zip(paths, pred_columns)},
        models=_int_column(table, "model") if "model" in table.column_names else None,
    )


def _read_clients(run: Path, path: Path) -> ClientPredictions:
    table = _read_parquet(run, path, ["client", "label", "pred"])
    return ClientPredictions(
        file=str(path.relative_to(run)),
        round=_round_metadata(table),
        clients=_int_column(table, "client"),
        labels=_int_column(table, "label"),
        preds=_int_column(table, "pred"),
    )


def _find_partition(workspace: Workspace, run: RunData) -> PartitionInfo | None:
    """The run's partition, looked up in the run's own workspace first, then in ``workspace``."""
    name = run.partition_name
    if not name:
        run.notes.append("the run manifest names no partition: client modalities and heatmap left out.")
        return None
    roots = []
    if run.artifact.path.parent.name == KINDS["run"][1]:
        roots.append(Workspace(run.artifact.path.parent.parent))
    roots.append(workspace)
    artifact = None
    for ws in roots:
        try:
            artifact = ws.resolve("partition", name)
            break
        except ArtifactError:
            continue
    if artifact is None:
        run.notes.append(
            f"partition {name!r} not found in {roots[0].root}: client modalities and the heatmap are "
            "left out (pass --workspace for the workspace that holds it)."
        )
        return None
    expected = run.artifact.manifest.get("inputs", {}).get("partition")
    if expected and expected != artifact.fingerprint:
        run.notes.append(f"partition {name!r} was re-created after this run: its client modalities may differ.")
    return _read_partition_info(artifact)


def _read_partition_info(artifact: Artifact) -> PartitionInfo:
    data = read_partition(artifact)
    stats = artifact.file(PARTITION_STATS)
    stats_data = json.loads(stats.read_text(encoding="utf-8")) if stats.is_file() else {}
    counts_list = stats_data.get("class_counts")
    counts = np.asarray(counts_list, dtype=np.int64) if counts_list else None
    held = {m: np.asarray(flags, dtype=bool) for m, flags in data.client_modalities.items()}
    return PartitionInfo(
        name=artifact.name,
        path=artifact.path,
        num_clients=data.num_clients,
        client_modalities=held,
        class_counts=counts,
        modality_share=_modality_share(stats_data, held),
    )


def _modality_share(stats: dict[str, Any], held: dict[str, np.ndarray]) -> np.ndarray | None:
    """(clients, modalities) share of each client's samples that have each modality: from
    stats.json's ``modality_counts`` / ``client_sizes`` when present, else the held flags."""
    if not held:
        return None
    counts, sizes = stats.get("modality_counts"), stats.get("client_sizes")
    if counts and sizes and all(m in counts for m in held):
        per_client = np.stack([np.asarray(counts[m], dtype=np.float64) for m in held], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(per_client / np.asarray(sizes, dtype=np.float64)[:, None])
    return np.stack(list(held.values()), axis=1).astype(np.float64)


def _note_completeness(run: RunData) -> None:
    rounds = f"{run.rounds_done if run.rounds_done is not None else '?'}/{run.rounds_total or '?'} rounds"
    if run.status != "complete":
        shown = "best-so-far predictions" if "best" in run.test else "no saved predictions yet"
        run.notes.insert(0, f"INCOMPLETE: run status is {run.status!r} ({rounds}); showing {shown}.")
    elif "final" not in run.test:
        run.notes.insert(0, f"INCOMPLETE: status is complete but {RUN_PREDICTIONS_DIR}/test-final.parquet is missing.")
