"""A toy workspace with a partition and two finished runs (fedavg, fedcmi) whose predictions are
chosen by hand; the expected numbers in the tests are worked out from these lists."""

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
