"""Feature shard schema: how a prepared dataset's samples are stored in Parquet.

One row per sample, columns::

    id        string    unique sample id (the clip / tweet-image name)
    label     int32     index into the manifest's ``classes``
    split     string    "train" | "val" | "test"
    group     string    natural-partition group (CREMA-D actor, AVE/CrisisMMD event); may be null
    <m>       arrow.fixed_shape_tensor   payload of modality m (zeros where absent); a ``sequence``
              payload (L, C + 1) ends in a presence-mask channel (1 real step, 0 padding)
    <m>_present bool    whether modality m is really there for this sample
    text      string    (optional, CrisisMMD) cleaned tweet text, kept for inspection

Shards are zstd-compressed ``shards/part-NNNNN.parquet`` files inside a dataset artifact; the
dataset manifest's ``modalities`` lists a :class:`ModalitySpec` per modality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.artifacts import Artifact, ArtifactError, atomic_write_parquet

SPLITS = ("train", "val", "test")
SHARD_DIR = "shards"
REJECTS_FILE = "rejects.parquet"
#: payload kinds a model knows how to encode (``vector`` (D,) and ``sequence`` (L, C + 1): numeric
#: arrays, see pipelines.extractors.arrays)
MODALITY_KINDS = ("spectrogram", "frames", "image", "embedding", "vector", "sequence")


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality's payload is: kind (picks the encoder), per-sample shape, dtype and the
    extractor parameters that produced it."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"modality kind must be one of {MODALITY_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModalitySpec":
        return cls(name=d["name"], kind=d["kind"], shape=tuple(d["shape"]), dtype=d["dtype"], params=d.get("params", {}))

    def tensor_type(self) -> pa.ExtensionType:
        return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(self.dtype)), list(self.shape))


def shard_schema(modalities: Sequence[ModalitySpec], with_text: bool = False) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("group", pa.string()),
    ]
    for spec in modalities:
        fields.append(pa.field(spec.name, spec.tensor_type()))
        fields.append(pa.field(f"{spec.name}_present", pa.bool_(), nullable=False))
    if with_text:
        fields.append(pa.field("text", pa.string()))
    return pa.schema(fields)


def build_table(
    modalities: Sequence[ModalitySpec],
    ids: Sequence[str],
    labels: Sequence[int],
    splits: Sequence[str],
    groups: Sequence[str | None],
    payloads: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    texts: Sequence[str | None] | None = None,
) -> pa.Table:
    """Assemble a shard table. ``payloads[m]`` has shape (N, *spec.shape); absent rows are zeros."""
    n = len(ids)
    arrays: list[pa.Array] = [
        pa.array(list(ids), pa.string()),
        pa.array(np.asarray(labels, dtype=np.int32)),
        pa.array(list(splits), pa.string()),
        pa.array(list(groups), pa.string()),
    ]
    for spec in modalities:
        data = np.ascontiguousarray(payloads[spec.name], dtype=np.dtype(spec.dtype))
        if data.shape != (n, *spec.shape):
            raise ValueError(f"modality {spec.name}: payload shape {data.shape}, expected {(n, *spec.shape)}")
        arrays.append(pa.FixedShapeTensorArray.from_numpy_ndarray(data))
        arrays.append(pa.array(np.asarray(present[spec.name], dtype=bool)))
    if texts is not None:
        arrays.append(pa.array(list(texts), pa.string()))
    schema = shard_schema(modalities, with_text=texts is not None)
    return pa.Table.from_arrays(arrays, schema=schema)


def write_shard(table: pa.Table, path: str | Path) -> None:
    """Write one shard atomically (zstd)."""
    atomic_write_parquet(path, table)


def modality_specs(dataset: Artifact) -> list[ModalitySpec]:
    return [ModalitySpec.from_dict(d) for d in dataset.manifest["modalities"]]


def shard_paths(dataset: Artifact) -> list[Path]:
    files = dataset.manifest.get("shards")
    if not files:
        raise ArtifactError(f"dataset {dataset.path} lists no shards; re-create it with `cmi prepare ... --force`.")
    return [dataset.path / f for f in files]


def read_table(dataset: Artifact, columns: Sequence[str] | None = None, split: str | None = None) -> pa.Table:
    """Read the dataset's shards (in manifest order) as one table, optionally one split only."""
    tables = []
    for path in shard_paths(dataset):
        if not path.is_file():
            raise ArtifactError(f"shard {path} is missing; re-create the dataset with `cmi prepare ... --force`.")
        t = pq.read_table(path, columns=list(columns) if columns is not None else None,
                          filters=[("split", "=", split)] if split else None)
        tables.append(t)
    return pa.concat_tables(tables) if tables else pa.table({})


def tensor_column(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-shape tensor column as an (N, *shape) numpy array."""
    col = table.column(name).combine_chunks()
    if len(col) == 0:
        shape = col.type.shape
        return np.zeros((0, *shape), dtype=col.type.value_type.to_pandas_dtype())
    return col.to_numpy_ndarray()
