"""Toy workspaces whose predictions are chosen by hand; the expected numbers in the tests are
worked out from these lists.

- ``toy``: a partition and two finished runs (fedavg, fedcmi).
- ``grid``: fedavg and fedcmi x seeds 0-2 (and an unfinished fedcmi seed 3) for aggregated reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipelines.artifacts import Workspace, eval_paths
from tests.reports.runs import MODALITIES, ClientPreds, Predictions, RunSpec, metrics_line, write_partition, write_run

PATHS = eval_paths(list(MODALITIES))
# 10 test samples: 4 of class a, 3 of b, 3 of c; the last one has no audio (audio paths and fused: -1).
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
FEDAVG_FINAL = {
    "fused":       [0, 0, 0, 0, 0, 1, 1, 2, 1, -1],
    "audio_only":  [0, 0, 1, 0, 1, 1, 1, 2, 2, -1],
    "visual_only": [0, 1, 0, 0, 2, 1, 1, 2, 2, 2],
    "audio_self":  [0, 0, 0, 1, 1, 1, 0, 2, 2, -1],
    "visual_self": [1, 1, 0, 0, 1, 1, 1, 0, 0, 2],
}
FEDAVG_BEST = {**FEDAVG_FINAL, "fused": [0, 0, 0, 0, 1, 1, 1, 2, 2, -1]}
FEDCMI_FINAL = {**FEDAVG_FINAL, "fused": [0, 0, 0, 0, 1, 1, 1, 2, 1, -1], "visual_only": [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]}
TEMPERATURES = [1.0, 0.8, 0.6]

# Per client (samples, correct) of the fedavg run's final clients file; 12 clients.
FEDAVG_CLIENTS = [(2, 2), (2, 1), (4, 1), (1, 1), (5, 1), (4, 3), (2, 2), (3, 2), (3, 3), (2, 1), (4, 2), (5, 4)]
FEDCMI_CLIENTS = [(2, 2), (2, 2), (4, 2), (1, 1), (5, 3), (4, 3), (2, 2), (3, 2), (3, 3), (2, 1), (4, 2), (5, 4)]
# clients 0-7 hold both modalities, 8-9 audio only, 10-11 visual only
CLIENT_MODALITIES = {"audio": [True] * 10 + [False] * 2, "visual": [True] * 8 + [False] * 2 + [True] * 2}


def client_preds(round_: int, samples_correct: list[tuple[int, int]]) -> ClientPreds:
    """Rows for each client: labels cycle through the classes, the first ``correct`` are right."""
    clients, labels, preds = [], [], []
    for cid, (n, k) in enumerate(samples_correct):
        for i in range(n):
            label = (cid + i) % 3
            clients.append(cid)
            labels.append(label)
            preds.append(label if i < k else (label + 1) % 3)
    return ClientPreds(round_, clients, labels, preds)


@dataclass
class Toy:
    ws: Workspace
    baseline: str = "fedavg"
    other: str = "fedcmi"


def fedavg_spec() -> RunSpec:
    return RunSpec(
        method="fedavg",
        metrics=[metrics_line(r, PATHS, 0.4 + 0.1 * r) for r in range(1, 5)],
        test={"best": Predictions(3, LABELS, FEDAVG_BEST), "final": Predictions(4, LABELS, FEDAVG_FINAL)},
        clients={"best": client_preds(3, FEDAVG_CLIENTS), "final": client_preds(4, FEDAVG_CLIENTS)},
    )


def fedcmi_spec() -> RunSpec:
    return RunSpec(
        method="fedcmi",
        best_round=4,
        metrics=[metrics_line(r, PATHS, 0.45 + 0.1 * r, temperatures=[1.0, 1.0 - 0.05 * r, 1.0 - 0.1 * r])
                 for r in range(1, 5)],
        test={"best": Predictions(4, LABELS, FEDCMI_FINAL), "final": Predictions(4, LABELS, FEDCMI_FINAL)},
        clients={"best": client_preds(4, FEDCMI_CLIENTS), "final": client_preds(4, FEDCMI_CLIENTS)},
    )


@pytest.fixture
def toy(tmp_path) -> Toy:
    ws = Workspace(tmp_path / "ws")
    counts = np.arange(36).reshape(12, 3) % 7 + 1
    write_partition(ws, "p", CLIENT_MODALITIES, counts)
    write_run(ws, "fedavg", fedavg_spec())
    write_run(ws, "fedcmi", fedcmi_spec())
    return Toy(ws)


# grid: 10 test samples, 4 of class a, 3 of b, 3 of c. A run with k right predicts the first k
# samples right and the others as the next class, on every path.
GRID_LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
# correct predictions (of 10) per seed
GRID_FEDAVG = {0: 6, 1: 7, 2: 5}     # accuracy 0.6, 0.7, 0.5: mean 0.6, std (ddof=1) 0.1
GRID_FEDCMI = {2: 9, 0: 8, 1: 7}     # written in another seed order: 0.8, 0.7, 0.9 for seeds 0, 1, 2
GRID_RUNS = ["avg-s0", "avg-s1", "avg-s2", "cmi-s2", "cmi-s0", "cmi-s1", "cmi-s3"]


def seed_spec(method: str, seed: int, k: int, **kw) -> RunSpec:
    """A finished run of ``seed`` with ``k`` of the 10 grid samples right on every path (both
    snapshots at round 4); its logged accuracy climbs 0.1 a round to k/10 (+ metrics_line's offsets)."""
    right = [label if i < k else (label + 1) % 3 for i, label in enumerate(GRID_LABELS)]
    p = Predictions(4, GRID_LABELS, {path: right for path in PATHS})
    return RunSpec(method=method, seed=seed, best_round=4, test={"best": p, "final": p},
                   metrics=[metrics_line(r, PATHS, k / 10 - 0.1 * (4 - r)) for r in range(1, 5)], **kw)


@pytest.fixture
def grid(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    write_partition(ws, "p", CLIENT_MODALITIES, np.arange(36).reshape(12, 3) % 7 + 1)
    for seed, k in GRID_FEDAVG.items():
        write_run(ws, f"avg-s{seed}", seed_spec("fedavg", seed, k))
    for seed, k in GRID_FEDCMI.items():
        write_run(ws, f"cmi-s{seed}", seed_spec("fedcmi", seed, k, config={"fedcmi": {"kappa": 2.0}}))
    write_run(ws, "cmi-s3", seed_spec("fedcmi", 3, 10, status="running", rounds_done=2))
    return ws
