"""The data of a training run: a partition, the dataset it was made from, loaded once.

Every shard is read once, for all three splits: its rows go straight into one preallocated array
per modality and split (uint8 stays uint8; the split sizes come from the dataset manifest's
``counts``), so peak memory is the loaded data plus one shard. Simulated clients hold only index
arrays into the train pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.artifacts import Artifact, ArtifactError, Workspace
from pipelines.errors import CmiError
from pipelines.fl import ClientData, TrainPool
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
    # late: pipelines.partitioning imports scipy, which a Flower ClientApp (this module, not this function) never needs
    from pipelines.partitioning import read_partition

    specs = modality_specs(dataset)
    parts = read_partition(partition)
    read = _read_splits(dataset, specs, parts.ids, partition.name)
    train_ids, train_arrays = read["train"]
    present = {m: train_arrays.present[m] & np.asarray(parts.available[m], dtype=bool) for m in train_arrays.present}
    client = np.asarray(parts.client, dtype=np.int32)
    modalities = tuple(s.name for s in specs)
    client_modalities = {m: np.asarray(parts.client_modalities[m], dtype=bool) for m in modalities}
    splits = {split: SampleSet(ids, arrays.to_pool(arrays.present))
              for split, (ids, arrays) in read.items() if split != "train"}
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


def _read_splits(dataset: Artifact, specs: list[ModalitySpec], train_order: np.ndarray,
                 partition_name: str) -> dict[str, tuple[np.ndarray, _SplitArrays]]:
    """Split -> (ids, arrays) for ``train`` and the :data:`EVAL_SPLITS`, reading every shard once.
    Train keeps only the rows of ``train_order`` (ids; a partition may leave out train samples
    that have no modality), placed in that order; val and test keep all their rows in dataset
    order, their sizes taken from the manifest's ``counts`` and checked against the shards."""
    counts = dataset.manifest.get("counts") or {}
    if any(split not in counts for split in EVAL_SPLITS):
        raise ArtifactError(f"dataset {dataset.name} has no per-split counts in its manifest; re-create it with "
                            "`cmi prepare ... --force`.")
    train_order = np.asarray(train_order).astype(str)
    sizes = {"train": len(train_order), **{split: int(counts[split]) for split in EVAL_SPLITS}}
    arrays = {split: _SplitArrays(
        inputs={s.name: np.empty((n, *s.shape), dtype=np.dtype(s.dtype)) for s in specs},
        present={s.name: np.empty(n, dtype=bool) for s in specs},
        labels=np.empty(n, dtype=np.int32)) for split, n in sizes.items()}
    eval_ids: dict[str, list[np.ndarray]] = {split: [] for split in EVAL_SPLITS}
    filled = dict.fromkeys(sizes, 0)
    position = _positions_in(train_order)
    columns = ["id", "label", "split", *(c for s in specs for c in (s.name, f"{s.name}_present"))]
    for path in shard_paths(dataset):
        shard = pq.read_table(path, columns=columns)
        split_of = shard.column("split").to_numpy(zero_copy_only=False)
        ids = shard.column("id").to_numpy(zero_copy_only=False).astype(str)
        for split, out in arrays.items():
            rows = split_of == split
            if split == "train":
                dest = position(ids)
                rows &= dest >= 0
                dest = dest[rows]
            elif rows.any():
                dest = np.arange(filled[split], filled[split] + int(rows.sum()))
                if dest[-1] >= sizes[split]:
                    raise ArtifactError(f"dataset {dataset.name} holds more {split} rows than its manifest counts "
                                        f"({sizes[split]}); re-create it with `cmi prepare ... --force`.")
                eval_ids[split].append(ids[rows])
            if not rows.any():
                continue
            filled[split] += int(rows.sum())
            out.labels[dest] = shard.column("label").to_numpy(zero_copy_only=False)[rows]
            for spec in specs:
                out.present[spec.name][dest] = shard.column(f"{spec.name}_present").to_numpy(zero_copy_only=False)[rows]
                out.inputs[spec.name][dest] = tensor_column(shard, spec.name)[rows]
        del shard
    if filled["train"] != sizes["train"]:
        raise CmiError(
            f"partition {partition_name} assigns samples that are not in the train split of dataset "
            f"{dataset.name}; re-create it with `cmi partition --force`."
        )
    short = [split for split in EVAL_SPLITS if filled[split] != sizes[split]]
    if short:
        raise ArtifactError(f"dataset {dataset.name} holds fewer {short[0]} rows ({filled[short[0]]}) than its manifest "
                            f"counts ({sizes[short[0]]}); re-create it with `cmi prepare ... --force`.")
    result = {"train": (train_order, arrays["train"])}
    for split in EVAL_SPLITS:
        ids = np.concatenate(eval_ids[split]) if eval_ids[split] else np.zeros(0, dtype=str)
        result[split] = (ids, arrays[split])
    return result


def _positions_in(order: np.ndarray):
    """A function mapping ids to their positions in ``order`` (-1 for an id not in it)."""
    sorter = np.argsort(order)

    def positions(ids: np.ndarray) -> np.ndarray:
        if len(order) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = sorter[np.clip(np.searchsorted(order, ids, sorter=sorter), 0, len(order) - 1)]
        return np.where(order[pos] == ids, pos, -1)

    return positions
