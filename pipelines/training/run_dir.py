"""A run directory (`cmi train`'s artifact): manifest, config, metrics log, predictions and
checkpoints. Layout: bottom of :mod:`pipelines.artifacts`.

Checkpoints: ``checkpoints/last.safetensors`` holds the global weights (``global/<key>``), the
method's server state (``server/<key>``: CMSFed's prototypes and distance matrices...) and
the loop state as JSON metadata, including which file holds each client's state of a
non-federated method (:class:`ClientStates`: ``checkpoints/clients/<sha256>.safetensors``, one per
distinct state, written once when it changes). It is replaced atomically after every round, so
weights and state always belong to the same round; client files it no longer references are
deleted after it, so a round writes the global weights plus the states of the clients it
trained, whatever the number of clients. ``checkpoints/best.safetensors`` holds the global
weights of the best round on validation.

Besides ``config.json`` a run holds ``config.toml`` (the same settings and the run's partition
and dataset, for ``cmi train --config``), and besides ``metrics.jsonl`` ``metrics.csv``: one row
per line of the log, rewritten with it (see :func:`metrics_table`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from pipelines.artifacts import (
    MANIFEST_NAME, RUN_CHECKPOINTS_DIR, RUN_CONFIG, RUN_METRICS, RUN_PREDICTIONS_DIR, Artifact,
    ArtifactError, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_parquet, atomic_write_text,
    canonical_json, load_artifact,
    update_manifest, write_manifest,
)

RUN_CONFIG_TOML = "config.toml"
RUN_METRICS_CSV = "metrics.csv"
LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
CLIENT_STATES_DIR = "clients"
_STATE_KEY = "cmi_state"

State = dict[str, torch.Tensor]


@dataclass
class Checkpoint:
    """Everything needed to continue a run after round ``round``; ``clients`` maps a client id to
    the digest of its state's file (:class:`ClientStates`)."""

    round: int
    global_state: State
    clients: dict[int, str] = field(default_factory=dict)
    best_round: int | None = None
    best_score: float | None = None
    identity: str = ""
    server_state: State = field(default_factory=dict)   # the method's (``FedAvg.server_update``)


def state_bytes(state: State) -> bytes:
    """``state`` serialised as safetensors (CPU, contiguous): the same tensors give the same bytes."""
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


class ClientStates:
    """The persistent per-client states of a non-federated method (``ClientUpdate.client_state``),
    kept on disk rather than in memory: one safetensors file per distinct state in ``directory``,
    named by the sha256 of its bytes (:func:`state_bytes`), written atomically once (an existing
    file already holds those bytes). ``digests`` maps client id -> digest; a state is read from its
    file on every access (on the CPU). Read like a mapping: ``cid in states``, ``states[cid]``,
    ``get``, ``keys``, ``items``, ``len``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.digests: dict[int, str] = {}

    def file(self, digest: str) -> Path:
        return self.directory / f"{digest}.safetensors"

    def put(self, cid: int, state: State) -> str:
        """Make ``state`` client ``cid``'s (its file written unless present); return its digest."""
        blob = state_bytes(state)
        digest = hashlib.sha256(blob).hexdigest()
        if not self.file(digest).is_file():
            atomic_write_bytes(self.file(digest), blob)
        self.digests[cid] = digest
        return digest

    def reset(self, digests: dict[int, str]) -> None:
        """Take ``digests`` (a checkpoint's ``clients``) as the current states; their files must exist."""
        missing = sorted(cid for cid, digest in digests.items() if not self.file(digest).is_file())
        if missing:
            raise ArtifactError(f"the states of clients {missing} are missing from {self.directory}; start the run "
                                "again with `cmi train --force`.")
        self.digests = dict(digests)

    def get(self, cid: int, default: State | None = None) -> State | None:
        digest = self.digests.get(cid)
        return default if digest is None else load_file(self.file(digest))

    def __getitem__(self, cid: int) -> State:
        if cid not in self.digests:
            raise KeyError(cid)
        return self.get(cid)

    def __contains__(self, cid: object) -> bool:
        return cid in self.digests

    def __len__(self) -> int:
        return len(self.digests)

    def keys(self):
        return self.digests.keys()

    def items(self) -> Iterator[tuple[int, State]]:
        return ((cid, self[cid]) for cid in sorted(self.digests))

    def collect_garbage(self, keep: set[str]) -> None:
        """Delete the state files whose digest is not in ``keep`` (and temporary files a kill left)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.name.startswith(".tmp-") or (path.suffix == ".safetensors" and path.stem not in keep):
                path.unlink(missing_ok=True)


class RunDirectory:
    """Reads and writes one run directory; every write is atomic."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics_file(self) -> Path:
        return self.path / RUN_METRICS

    @property
    def checkpoint_file(self) -> Path:
        return self.path / RUN_CHECKPOINTS_DIR / LAST_CHECKPOINT

    def exists(self) -> bool:
        return (self.path / MANIFEST_NAME).is_file()

    def artifact(self) -> Artifact:
        return load_artifact(self.path, "run")

    # ------------------------------------------------------------------ manifest and config

    def create(self, config: dict[str, Any], config_toml: str, inputs: dict[str, str],
               extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``config.json``, ``config.toml`` (its text given) and the manifest (status
        ``running``) of a new run."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / RUN_CONFIG, config)
        atomic_write_text(self.path / RUN_CONFIG_TOML, config_toml)
        return write_manifest(self.path, "run", config, inputs=inputs, extra={"status": "running", **extra})

    def read_config(self) -> dict[str, Any]:
        path = self.path / RUN_CONFIG
        if not path.is_file():
            raise ArtifactError(f"{self.path} has no {RUN_CONFIG}; start the run again with `cmi train --force`.")
        return json.loads(path.read_text(encoding="utf-8"))

    def update(self, **fields: Any) -> dict[str, Any]:
        return update_manifest(self.path, **fields)

    # ------------------------------------------------------------------ metrics log

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl``, make it durable (flush + fsync) and rewrite
        ``metrics.csv``."""
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            fh.write(canonical_json(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._write_metrics_csv()

    def _write_metrics_csv(self) -> None:
        manifest = self.path / MANIFEST_NAME
        classes = json.loads(manifest.read_text(encoding="utf-8")).get("classes") if manifest.is_file() else None
        columns, rows = metrics_table(self.read_metrics(), classes)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if row.get(c) is None else row[c] for c in columns] for row in rows])
        atomic_write_text(self.path / RUN_METRICS_CSV, out.getvalue())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> None:
        """Keep only the lines of rounds <= ``last_round`` (a resumed run replays the rest); a line
        cut short by a kill is dropped too."""
        if not self.metrics_file.is_file():
            return
        kept = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["round"] <= last_round:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(self.metrics_file, "".join(kept))
        self._write_metrics_csv()

    # ------------------------------------------------------------------ predictions

    def write_test_predictions(self, which: str, ids: np.ndarray, labels: np.ndarray,
                               paths: dict[str, np.ndarray], round_: int, models: np.ndarray | None = None) -> Path:
        """``predictions/test-<which>.parquet``: id, label, pred_<path> (and model) columns."""
        columns = {"id": pa.array(ids, pa.string()), "label": pa.array(labels.astype(np.int32))}
        columns.update({f"pred_{p}": pa.array(v.astype(np.int32)) for p, v in paths.items()})
        if models is not None:
            columns["model"] = pa.array(models.astype(np.int32))
        return self._write_table(f"test-{which}.parquet", columns, round_)

    def write_client_predictions(self, which: str, ids: np.ndarray, clients: np.ndarray, labels: np.ndarray,
                                 preds: np.ndarray, round_: int) -> Path:
        """``predictions/clients-<which>.parquet``: id, client, label, pred columns."""
        columns = {
            "id": pa.array(ids, pa.string()),
            "client": pa.array(clients.astype(np.int32)),
            "label": pa.array(labels.astype(np.int32)),
            "pred": pa.array(preds.astype(np.int32)),
        }
        return self._write_table(f"clients-{which}.parquet", columns, round_)

    def _write_table(self, filename: str, columns: dict[str, pa.Array], round_: int) -> Path:
        path = self.path / RUN_PREDICTIONS_DIR / filename
        atomic_write_parquet(path, pa.table(columns).replace_schema_metadata({"round": str(round_)}))
        return path

    # ------------------------------------------------------------------ checkpoints

    def client_states(self) -> ClientStates:
        """The store of this run's per-client states (``checkpoints/clients/``)."""
        return ClientStates(self.path / RUN_CHECKPOINTS_DIR / CLIENT_STATES_DIR)

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        """Replace ``last.safetensors`` with ``ckpt`` (its client files must have been written by
        :meth:`ClientStates.put`), then delete the client files it no longer references."""
        tensors = {f"global/{k}": v for k, v in ckpt.global_state.items()}
        tensors.update({f"server/{k}": v for k, v in ckpt.server_state.items()})
        meta = {"round": ckpt.round, "best_round": ckpt.best_round, "best_score": ckpt.best_score,
                "identity": ckpt.identity, "clients": {str(cid): d for cid, d in sorted(ckpt.clients.items())}}
        _save_tensors(self.checkpoint_file, tensors, {_STATE_KEY: json.dumps(meta)})
        self.client_states().collect_garbage(set(ckpt.clients.values()))

    def save_best(self, state: State, round_: int) -> None:
        _save_tensors(self.path / RUN_CHECKPOINTS_DIR / BEST_CHECKPOINT, state, {"round": str(round_)})

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or None when the run never finished a round."""
        path = self.checkpoint_file
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads(fh.metadata()[_STATE_KEY])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise ArtifactError(
                f"checkpoint {path} is unreadable ({exc}); start the run again with `cmi train --force`."
            ) from exc
        global_state: State = {}
        server_state: State = {}
        inline: dict[int, State] = {}   # client states inside the file: checkpoints of cmi before ClientStates
        for key, value in tensors.items():
            scope, _, rest = key.partition("/")
            if scope == "global":
                global_state[rest] = value
            elif scope == "server":
                server_state[rest] = value
            else:
                cid, _, name = rest.partition("/")
                inline.setdefault(int(cid), {})[name] = value
        if isinstance(meta["clients"], dict):
            clients = {int(cid): digest for cid, digest in meta["clients"].items()}
        else:
            store = self.client_states()
            clients = {cid: store.put(cid, state) for cid, state in inline.items()}
        return Checkpoint(meta["round"], global_state, clients, meta["best_round"], meta["best_score"],
                          meta["identity"], server_state)


#: list-valued metrics that are sets of client ids (one text cell), not per-class values
_ID_LISTS = ("clients", "failed_clients")
#: dicts whose list values are sets of client ids too (CMSFed's weak-only clients per modality)
_ID_LIST_DICTS = ("trained_only",)


def metrics_table(records: list[dict[str, Any]], classes: list[str] | None = None
                  ) -> tuple[list[str], list[dict[str, Any]]]:
    """``metrics.jsonl`` lines as flat rows: nested keys joined by dots (``test.accuracy.fused``),
    per-class lists one column per class (``test.per_class_recall.fused.NEU``, by index without
    ``classes``), client id lists as space-separated text. Returns (columns in order of first
    appearance, rows); a key a row lacks (a non-evaluated split) is None there."""
    rows = []
    for record in records:
        row: dict[str, Any] = {}
        _flatten_metrics(record, "", classes, row)
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    # a list that is null in some rows (FedCMI's temperatures before its warm-up) has only its per-class columns
    columns = [c for c in columns if not (any(o.startswith(c + ".") for o in columns)
                                          and all(row.get(c) is None for row in rows))]
    return sorted(columns, key=lambda c: c != "round"), rows


def _flatten_metrics(value: Any, key: str, classes: list[str] | None, row: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for sub, inner in value.items():
            _flatten_metrics(inner, f"{key}.{sub}" if key else sub, classes, row)
    elif isinstance(value, list) and (key in _ID_LISTS or key.partition(".")[0] in _ID_LIST_DICTS):
        row[key] = " ".join(str(v) for v in value)
    elif isinstance(value, list):
        names = classes if classes is not None and len(classes) == len(value) else range(len(value))
        row.update({f"{key}.{name}": v for name, v in zip(names, value)})
    else:
        row[key] = value


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
