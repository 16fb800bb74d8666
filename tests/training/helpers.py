"""A small dataset and its partition in a test workspace, and config shortcuts for quick runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.artifacts import Workspace
from pipelines.partitioning import PartitionSettings, run_partition
from pipelines.training.config import RunConfig, resolve_config
from tests.factories import make_dataset

#: a few seconds per run on 2 cores: tiny model, few rounds
QUICK = {
    "rounds": 3, "clients_per_round": 3, "seed": 0, "device": "cpu", "eval_batch_size": 64,
    "model": {"embed_dim": 16},
    "train": {"lr": 0.05, "local_epochs": 1, "batch_size": 16},
}


def partitioned_workspace(tmp_path: Path, *, clients: int = 6, missing: float = 0.3, alpha: float = 1.0,
                          **dataset: Any) -> Workspace:
    """A workspace holding a toy dataset (tests.factories) and a Dirichlet partition of it."""
    ws = Workspace(tmp_path / "ws")
    dataset.setdefault("per_class", {"train": 24, "val": 6, "test": 6})
    dataset.setdefault("signal", {"audio": 1.0, "visual": 0.5})
    make_dataset(ws, "toy", **dataset)
    run_partition(ws, PartitionSettings.from_options(alpha=alpha, clients=clients, missing=missing, seed=0))
    return ws


def quick_config(**overrides: Any) -> RunConfig:
    """QUICK settings with dotted-key overrides (``train.lr=...`` as ``**{"train.lr": ...}``)."""
    return resolve_config(QUICK, overrides)
