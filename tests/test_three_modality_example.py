"""examples/three-modality end to end: the script writes a signal dataset (accelerometer and
gyroscope CSV sequences, a feature vector .npy), then prepare, partition (with lost sets of
modalities), train (FedAvg, FedCMI) and report run through the CLI, with tiny settings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace, eval_paths
from pipelines.partitioning import read_partition

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "three-modality"
MODALITIES = ["accel", "gyro", "feat"]
TINY = ["--rounds", "2", "--clients-per-round", "3", "--local-epochs", "1", "--batch-size", "8",
        "--set", "model.embed_dim=16", "--device", "cpu", "--quiet"]


def cmi(ws: Workspace, *args: str):
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), *args],
                                env={"CMI_THREADS": "1", "COLUMNS": "200"})
    assert result.exit_code == 0, f"cmi {' '.join(args)}:\n{result.output}"
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("three-modality") / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "make_dataset.py"), str(out), "--per-class", "10"],
                   check=True, capture_output=True, text=True, timeout=120)
    return out


def test_the_script_writes_signals_and_a_manifest(data):
    rows = list(csv.DictReader((data / "manifest.csv").open()))
    assert list(rows[0]) == ["id", "label", "split", "group", *MODALITIES]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "train" for r in rows) == 30 and {r["label"] for r in rows} == {"walk", "run", "rest"}
    first = rows[0]
    accel = np.loadtxt(data / first["accel"], delimiter=",", skiprows=1)
    assert accel.ndim == 2 and accel.shape[1] == 3 and 48 <= accel.shape[0] <= 64
    assert np.load(data / first["feat"]).shape == (16,)
    # deterministic for a seed
    again = data.parent / "again"
    subprocess.run([sys.executable, str(EXAMPLE / "make_dataset.py"), str(again), "--per-class", "10"],
                   check=True, capture_output=True, timeout=120)
    assert (again / "manifest.csv").read_text() == (data / "manifest.csv").read_text()
    assert (again / first["gyro"]).read_bytes() == (data / first["gyro"]).read_bytes()


def test_prepare_partition_train_and_report_with_three_modalities(data, tmp_path):
    ws = Workspace(tmp_path / "ws")
    cmi(ws, "prepare", "manifest", "--root", str(data / "manifest.csv"), "--array-length", "64", "--workers", "1",
        "--quiet")
    dataset = ws.resolve("dataset")
    specs = {m["name"]: m for m in dataset.manifest["modalities"]}
    assert list(specs) == MODALITIES
    assert specs["accel"]["shape"] == [64, 4] and specs["feat"]["shape"] == [16]  # sequence + mask; vector

    cmi(ws, "partition", "--alpha", "0.5", "--missing", "0.3", "--clients", "4", "--quiet")
    partition = ws.resolve("partition")
    stats = json.loads(partition.file("stats.json").read_text())
    assert partition.name == "manifest-dir0.5-c4-m0.3-s0" and stats["missing"]["clients"] == 1
    held = read_partition(partition).client_modalities
    assert sum(not all(held[m][k] for m in MODALITIES) for k in range(4)) == 1

    runs = []
    for method in ("fedavg", "fedcmi"):
        cmi(ws, "train", "--method", method, *TINY)
        runs.append(ws.latest_name("run"))
    report = json.loads(cmi(ws, "report", "--compare", *runs, "--format", "json").stdout)
    for run in report["runs"]:
        assert run["complete"] and run["modalities"] == MODALITIES
        assert run["eval_paths"] == eval_paths(MODALITIES)
        summary = run["snapshots"]["final"]["summary"]
        for m in MODALITIES:
            assert summary[f"{m}_self"]["rows"] == 9 and summary[f"{m}_only"]["rows"] == 9  # every test sample
    table = cmi(ws, "report", "--compare", *runs, "--per-client").stdout
    assert all(f"{m}_self" in table for m in MODALITIES)
