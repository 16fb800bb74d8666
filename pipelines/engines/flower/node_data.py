"""The training data of a SuperNode's ClientApp, memory-mapped from a cache in the workspace.

Flower starts a fresh ClientApp process for every message, so reading the train split from the
dataset's Parquet shards in every round would cost a full dataset load per round and SuperNode
(about 25 s for a CREMA-D-sized dataset on 2 cores). The train part of a
:class:`~pipelines.training.data.TrainingData` (pool tensors, sample ids, the client of each
row, each client's modalities) is therefore written once as ``.npy`` files under
``<workspace>/.cache/flower/<partition>-<key>/`` and memory-mapped by every later ClientApp; the
OS page cache is shared by all SuperNodes of a machine. `cmi train --engine flower` writes it from
the data it already holds before a loopback run; otherwise the first ClientApp that misses it
loads the data the usual way and writes it. The key covers the partition's and the dataset's
fingerprints and cmi's version, so a changed input is never read from a stale cache; deleting
the folder is always safe.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import pipelines
from pipelines.artifacts import Artifact, Workspace, atomic_write_json, fingerprint
from pipelines.fl import TrainPool
from pipelines.shards import modality_specs
from pipelines.training.data import SampleSet, TrainingData, load_training_data, make_clients

CACHE_DIR = Path(".cache") / "flower"
META = "meta.json"
_FORMAT = 1


def cache_path(workspace: Workspace, partition: Artifact, dataset: Artifact) -> Path:
    key = fingerprint([partition.fingerprint, dataset.fingerprint, pipelines.__version__, _FORMAT])[:16]
    return workspace.root / CACHE_DIR / f"{partition.name}-{key}"


def write_train_cache(workspace: Workspace, data: TrainingData) -> Path:
    """Write ``data``'s train part to its cache folder (written whole under a temporary name,
    then renamed; a folder another process finished first is kept). Returns the folder."""
    target = cache_path(workspace, data.partition, data.dataset)
    if (target / META).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        pool = data.train.pool
        for i, m in enumerate(data.modalities):
            np.save(tmp / f"input-{i}.npy", pool.inputs[m].numpy())
            np.save(tmp / f"present-{i}.npy", pool.present[m].numpy())
        np.save(tmp / "labels.npy", pool.labels.numpy())
        np.save(tmp / "ids.npy", np.asarray(data.train.ids).astype(str))
        np.save(tmp / "client.npy", data.train_client)
        atomic_write_json(tmp / META, {
            "num_clients": len(data.clients),
            "client_modalities": {m: [m in c.modalities for c in data.clients] for m in data.modalities},
        })
        try:
            tmp.rename(target)
        except OSError:
            if not (target / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_node_data(workspace: Workspace, partition_ref: str) -> TrainingData:
    """The run's TrainingData without the val/test splits (``splits`` is empty), its train pool
    memory-mapped from the cache (written first if missing)."""
    partition = workspace.resolve("partition", partition_ref)
    dataset = workspace.resolve("dataset", partition.manifest.get("dataset"))
    directory = cache_path(workspace, partition, dataset)
    if not (directory / META).is_file():
        directory = write_train_cache(workspace, load_training_data(workspace, partition_ref))
    specs = modality_specs(dataset)
    meta = json.loads((directory / META).read_text(encoding="utf-8"))

    def mapped(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(directory / name, mmap_mode="c"))  # copy-on-write: writable, lazily read

    modalities = [s.name for s in specs]
    pool = TrainPool(inputs={m: mapped(f"input-{i}.npy") for i, m in enumerate(modalities)},
                     present={m: mapped(f"present-{i}.npy") for i, m in enumerate(modalities)},
                     labels=mapped("labels.npy"))
    client = np.load(directory / "client.npy")
    client_modalities = {m: np.asarray(held, dtype=bool) for m, held in meta["client_modalities"].items()}
    return TrainingData(
        dataset=dataset, partition=partition, specs=specs, classes=list(dataset.manifest["classes"]),
        train=SampleSet(np.load(directory / "ids.npy"), pool), train_client=client,
        clients=make_clients(client, client_modalities, meta["num_clients"], modalities), splits={},
    )
