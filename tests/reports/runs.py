"""Small run and partition artifacts written exactly in the documented layouts (bottom of
pipelines/artifacts.py and TRAINING-INTERFACES.md), with hand-chosen predictions, so report tests
do not depend on training."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.artifacts import (
    PARTITION_ASSIGNMENTS, PARTITION_CLIENTS, PARTITION_HEATMAP, PARTITION_STATS, RUN_CONFIG, RUN_METRICS,
    RUN_PREDICTIONS_DIR, Artifact, Workspace, atomic_write_json, eval_paths, load_artifact, write_manifest,
)

CLASSES = ("a", "b", "c")
MODALITIES = ("audio", "visual")


def write_partition(
    ws: Workspace, name: str, client_modalities: dict[str, Sequence[bool]], class_counts: np.ndarray,
    *, heatmap: bool = True, classes: Sequence[str] = CLASSES,
) -> Artifact:
    """A partition artifact: clients.parquet, assignments.parquet, stats.json and (optionally) a
    tiny heatmap.png."""
    directory = ws.artifact_dir("partition", name)
    directory.mkdir(parents=True)
    modalities = list(client_modalities)
    num_clients = class_counts.shape[0]
    clients = {"client": pa.array(np.arange(num_clients), pa.int32()),
               "n_samples": pa.array(class_counts.sum(axis=1), pa.int64()),
               "group": pa.array([None] * num_clients, pa.string())}
    clients.update({m: pa.array(list(v), pa.bool_()) for m, v in client_modalities.items()})
    pq.write_table(pa.table(clients), directory / PARTITION_CLIENTS)
    owner = np.repeat(np.arange(num_clients), class_counts.sum(axis=1))
    assignments = {"id": pa.array([f"train-{i:05d}" for i in range(owner.size)]),
                   "client": pa.array(owner, pa.int32())}
    assignments.update({m: pa.array(np.asarray(v, dtype=bool)[owner]) for m, v in client_modalities.items()})
    pq.write_table(pa.table(assignments), directory / PARTITION_ASSIGNMENTS)
    atomic_write_json(directory / PARTITION_STATS, {"class_counts": class_counts.tolist()})
    files = [PARTITION_CLIENTS, PARTITION_ASSIGNMENTS, PARTITION_STATS]
    if heatmap:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (0, 114, 178)).save(buffer, format="PNG")
        (directory / PARTITION_HEATMAP).write_bytes(buffer.getvalue())
        files.append(PARTITION_HEATMAP)
    write_manifest(directory, "partition", {"alpha": 0.5, "name": name}, inputs={"dataset": "0" * 64}, files=files,
                   extra={"dataset": "toy", "classes": list(classes), "modalities": modalities,
                          "num_clients": num_clients})
    ws.set_latest("partition", name)
    return load_artifact(directory, "partition")


@dataclass
class Predictions:
    """One test-<snapshot>.parquet: labels, pred per path (-1 = undefined), optional model column."""

    round: int
    labels: Sequence[int]
    preds: dict[str, Sequence[int]]
    ids: Sequence[str] | None = None
    model: Sequence[int] | None = None


@dataclass
class ClientPreds:
    """One clients-<snapshot>.parquet."""

    round: int
    client: Sequence[int]
    labels: Sequence[int]
    pred: Sequence[int]


@dataclass
class RunSpec:
    method: str = "fedavg"
    status: str = "complete"
    rounds_total: int = 4
    rounds_done: int = 4
    best_round: int | None = 3
    classes: Sequence[str] = CLASSES
    modalities: Sequence[str] = MODALITIES
    partition: str | None = "p"
    metrics: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Predictions] = field(default_factory=dict)
    clients: dict[str, ClientPreds] = field(default_factory=dict)
    seed: int = 0
    #: more of the resolved config (nested tables, e.g. {"fedcmi": {"kappa": 2.0}})
    config: dict[str, Any] = field(default_factory=dict)


def metrics_line(round_: int, paths: Sequence[str], acc: float, *, n_classes: int = 3,
                 temperatures: Sequence[float] | None = None, ratio: float = 1.5, **extra: Any) -> dict[str, Any]:
    """A metrics.jsonl line in the documented schema (numbers are what training would log);
    ``extra`` keys are added or replace the defaults (``clients``, ``trained_only``, ``server``...)."""
    split = {"accuracy": {p: acc - 0.05 * i for i, p in enumerate(paths)},
             "per_class_recall": {p: [acc] * n_classes for p in paths},
             "macro_f1": {p: acc for p in paths}, "imbalance_ratio": ratio}
    return {"round": round_, "time_s": 1.0, "clients": [0, 1], "failed_clients": [], "train_loss": 1.0 / round_,
            "temperatures": list(temperatures) if temperatures is not None else None,
            "val": split, "test": {**split, "accuracy": {p: v + 0.01 for p, v in split["accuracy"].items()}},
            "client_accuracy": {"mean": acc, "std": 0.1, "worst10": acc / 2}, **extra}


def _write_parquet(path, columns: dict[str, pa.Array], round_: int) -> None:
    table = pa.table(columns).replace_schema_metadata({"round": str(round_)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_run(ws: Workspace, name: str, spec: RunSpec) -> Artifact:
    """A run directory: manifest (kind run, documented extra keys), config.json, metrics.jsonl and
    the prediction files of ``spec``."""
    directory = ws.artifact_dir("run", name)
    directory.mkdir(parents=True)
    paths = eval_paths(list(spec.modalities))
    config = {"method": spec.method, "seed": spec.seed, "rounds": spec.rounds_total, **spec.config}
    atomic_write_json(directory / RUN_CONFIG, config)
    (directory / RUN_METRICS).write_text("".join(json.dumps(line) + "\n" for line in spec.metrics))
    for snap, p in spec.test.items():
        n = len(p.labels)
        ids = p.ids if p.ids is not None else [f"test-{i:04d}" for i in range(n)]
        columns = {"id": pa.array(list(ids), pa.string()), "label": pa.array(p.labels, pa.int32())}
        columns.update({f"pred_{k}": pa.array(v, pa.int32()) for k, v in p.preds.items()})
        if p.model is not None:
            columns["model"] = pa.array(p.model, pa.int32())
        _write_parquet(directory / RUN_PREDICTIONS_DIR / f"test-{snap}.parquet", columns, p.round)
    for snap, c in spec.clients.items():
        n = len(c.labels)
        columns = {"id": pa.array([f"train-{i:05d}" for i in range(n)]), "client": pa.array(c.client, pa.int32()),
                   "label": pa.array(c.labels, pa.int32()), "pred": pa.array(c.pred, pa.int32())}
        _write_parquet(directory / RUN_PREDICTIONS_DIR / f"clients-{snap}.parquet", columns, c.round)
    inputs = {}
    if spec.partition and (ws.artifact_dir("partition", spec.partition) / "manifest.json").is_file():
        inputs["partition"] = load_artifact(ws.artifact_dir("partition", spec.partition), "partition").fingerprint
    write_manifest(directory, "run", config, inputs=inputs, files=[RUN_CONFIG],
                   extra={"status": spec.status, "method": spec.method, "engine": "local", "dataset": "toy",
                          "partition": spec.partition, "classes": list(spec.classes),
                          "modalities": list(spec.modalities), "eval_paths": paths,
                          "rounds_done": spec.rounds_done, "rounds_total": spec.rounds_total,
                          "best_round": spec.best_round})
    ws.set_latest("run", name)
    return load_artifact(directory, "run")
