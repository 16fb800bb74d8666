"""The data of a training run: a partition, the dataset it was made from, loaded once.

Payloads are read shard by shard into one preallocated array per modality and split (uint8
stays uint8), so peak memory is the loaded data plus one shard. Simulated clients hold only
index arrays into the train pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.artifacts import Artifact, Workspace
from pipelines.errors import CmiError
from pipelines.fl import ClientData, TrainPool
from pipelines.partitioning import read_partition
from pipelines.shards import ModalitySpec, modality_specs, shard_paths, tensor_column

EVAL_SPLITS = ("val", "test")


@dataclass
class SampleSet:
    """Samples of one split: ids (str array) and their tensors as a pool."""

    ids: np.ndarray
    pool: TrainPool

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TrainingData:
    """Everything a run reads: artifacts, modality specs, the train pool (rows in the
    partition's order, ``present`` = shard presence AND partition availability), the clients,
    and the val/test sets."""

    dataset: Artifact
    partition: Artifact
    specs: list[ModalitySpec]
    classes: list[str]
    train: SampleSet
    train_client: np.ndarray          # (N_train,) int32: client of each train row
    clients: list[ClientData]
    splits: dict[str, SampleSet]      # "val", "test"

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_training_data(workspace: Workspace, partition_ref: str | None = None) -> TrainingData:
    """Resolve the partition (latest by default) and its dataset, check they belong together,
    and load the train/val/test payloads once."""
    partition = workspace.resolve("partition", partition_ref)
    dataset_name = partition.manifest.get("dataset")
    if not dataset_name:
        raise CmiError(f"partition {partition.name} names no dataset; re-create it with `cmi partition --force`.")
    dataset = workspace.resolve("dataset", dataset_name)
    made_from = partition.manifest.get("inputs", {}).get("dataset")
    if made_from != dataset.fingerprint:
        raise CmiError(
            f"partition {partition.name} was made from another version of dataset {dataset_name} "
            f"(the dataset was re-prepared since); run `cmi partition` again on the current dataset."
        )
    specs = modality_specs(dataset)
    parts = read_partition(partition)
    train_ids, train_arrays = _read_split(dataset, specs, "train", order=parts.ids, partition_name=partition.name)
    present = {m: train_arrays.present[m] & np.asarray(parts.available[m], dtype=bool) for m in train_arrays.present}
    client = np.asarray(parts.client, dtype=np.int32)
    modalities = tuple(s.name for s in specs)
    client_modalities = {m: np.asarray(parts.client_modalities[m], dtype=bool) for m in modalities}
    splits = {}
    for split in EVAL_SPLITS:
        ids, arrays = _read_split(dataset, specs, split)
        splits[split] = SampleSet(ids, arrays.to_pool(arrays.present))
    return TrainingData(
        dataset=dataset,
        partition=partition,
        specs=specs,
        classes=list(dataset.manifest["classes"]),
        train=SampleSet(train_ids, train_arrays.to_pool(present)),
        train_client=client,
        clients=make_clients(client, client_modalities, parts.num_clients, modalities),
        splits=splits,
    )


def make_clients(client: np.ndarray, client_modalities: dict[str, np.ndarray], num_clients: int,
                 modalities: Sequence[str]) -> list[ClientData]:
    """One :class:`ClientData` per client id: the train rows it owns (ascending) and the
    modalities it holds at all."""
    order = np.argsort(client, kind="stable")
    counts = np.bincount(client, minlength=num_clients)
    rows = np.split(order, np.cumsum(counts)[:-1])
    return [
        ClientData(cid=cid, indices=rows[cid], modalities=tuple(m for m in modalities if client_modalities[m][cid]))
        for cid in range(num_clients)
    ]


@dataclass
class _SplitArrays:
    inputs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    labels: np.ndarray

    def to_pool(self, present: dict[str, np.ndarray]) -> TrainPool:
        return TrainPool(
            inputs={m: torch.from_numpy(a) for m, a in self.inputs.items()},
            present={m: torch.from_numpy(np.ascontiguousarray(p)) for m, p in present.items()},
            labels=torch.from_numpy(self.labels.astype(np.int64)),
        )


def _split_filter(split: str) -> list:
    return [("split", "=", split)]


def _read_split(dataset: Artifact, specs: list[ModalitySpec], split: str, *, order: np.ndarray | None = None,
                partition_name: str = "") -> tuple[np.ndarray, _SplitArrays]:
    """Read one split of the dataset. With ``order`` (ids), only those rows are kept, placed in
    that order (a partition may leave out train samples that have no modality); otherwise all
    rows in dataset order."""
    paths = shard_paths(dataset)
    present_cols = [f"{s.name}_present" for s in specs]
    heads = [pq.read_table(p, columns=["id", "label", *present_cols], filters=_split_filter(split)) for p in paths]

    def concat(name: str) -> np.ndarray:
        return np.concatenate([t.column(name).to_numpy(zero_copy_only=False) for t in heads])

    ids = concat("id").astype(str)
    if order is None:
        order, dest = ids, np.arange(len(ids))
    else:
        order = np.asarray(order).astype(str)
        dest = _positions(ids, order, dataset.name, partition_name)
    kept = dest >= 0
    n = len(order)

    def column(name: str, dtype) -> np.ndarray:
        out = np.empty(n, dtype=dtype)
        out[dest[kept]] = concat(name)[kept]
        return out

    labels = column("label", np.int32)
    present = {s.name: column(f"{s.name}_present", bool) for s in specs}
    inputs = {s.name: np.empty((n, *s.shape), dtype=np.dtype(s.dtype)) for s in specs}
    offset = 0
    for path, head in zip(paths, heads):
        rows = dest[offset:offset + head.num_rows]
        offset += head.num_rows
        take = rows >= 0
        if not take.any():
            continue
        shard = pq.read_table(path, columns=[s.name for s in specs], filters=_split_filter(split))
        for spec in specs:
            payload = tensor_column(shard, spec.name)
            inputs[spec.name][rows[take]] = payload if take.all() else payload[take]
        del shard
    return order, _SplitArrays(inputs, present, labels)


def _positions(ids: np.ndarray, order: np.ndarray, dataset_name: str, partition_name: str) -> np.ndarray:
    """For each of ``ids``, its position in ``order`` (-1 if absent); every id of ``order`` must
    be among ``ids``."""
    if len(order) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    sorter = np.argsort(order)
    pos = sorter[np.clip(np.searchsorted(order, ids, sorter=sorter), 0, len(order) - 1)]
    dest = np.where(order[pos] == ids, pos, -1)
    if np.count_nonzero(dest >= 0) != len(order):
        raise CmiError(
            f"partition {partition_name} assigns samples that are not in the train split of dataset "
            f"{dataset_name}; re-create it with `cmi partition --force`."
        )
    return dest
