"""A run directory (`cmi train`'s artifact): manifest, config, metrics log, predictions and
checkpoints. Layout: bottom of :mod:`pipelines.artifacts`.

Checkpoints are one safetensors file, ``checkpoints/last.safetensors``, holding the global
weights (``global/<key>``), the per-client weights of a non-federated method
(``client/<cid>/<key>``) and the loop state as JSON metadata; it is replaced atomically after
every round, so weights and state always belong to the same round. ``checkpoints/best.safetensors``
holds the global weights of the best round on validation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.artifacts import (
    MANIFEST_NAME, RUN_CHECKPOINTS_DIR, RUN_CONFIG, RUN_METRICS, RUN_PREDICTIONS_DIR, Artifact,
    ArtifactError, atomic_path, atomic_write_json, atomic_write_parquet, atomic_write_text, canonical_json,
    load_artifact,
    update_manifest, write_manifest,
)

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
_STATE_KEY = "cmi_state"

State = dict[str, torch.Tensor]


@dataclass
class Checkpoint:
    """Everything needed to continue a run after round ``round``."""

    round: int
    global_state: State
    client_states: dict[int, State] = field(default_factory=dict)
    best_round: int | None = None
    best_score: float | None = None
    identity: str = ""


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

    def create(self, config: dict[str, Any], inputs: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``config.json`` and the manifest (status ``running``) of a new run."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / RUN_CONFIG, config)
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
        """Append one line to ``metrics.jsonl`` and make it durable (flush + fsync)."""
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            fh.write(canonical_json(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

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

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        tensors = {f"global/{k}": v for k, v in ckpt.global_state.items()}
        for cid, state in ckpt.client_states.items():
            tensors.update({f"client/{cid}/{k}": v for k, v in state.items()})
        meta = {"round": ckpt.round, "best_round": ckpt.best_round, "best_score": ckpt.best_score,
                "identity": ckpt.identity, "clients": sorted(ckpt.client_states)}
        _save_tensors(self.checkpoint_file, tensors, {_STATE_KEY: json.dumps(meta)})

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
        client_states: dict[int, State] = {int(c): {} for c in meta["clients"]}
        global_state: State = {}
        for key, value in tensors.items():
            scope, _, rest = key.partition("/")
            if scope == "global":
                global_state[rest] = value
            else:
                cid, _, name = rest.partition("/")
                client_states[int(cid)][name] = value
        return Checkpoint(meta["round"], global_state, client_states, meta["best_round"], meta["best_score"],
                          meta["identity"])


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
