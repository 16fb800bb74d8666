"""The partition artifact's tables (layout: bottom of ``pipelines.artifacts``) and their reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.artifacts import (
    PARTITION_ASSIGNMENTS, PARTITION_CLIENTS, Artifact, ArtifactError, atomic_write_parquet,
)

_RECREATE = "re-create it with `cmi partition ... --force`"


@dataclass
class PartitionData:
    """A partition as the training engine uses it.

    ``ids`` are the assigned training samples in dataset train order (every train sample that has
    at least one modality after missingness; see stats.json ``excluded`` for the others);
    ``client``, ``available`` are aligned with them; ``client_modalities[m][k]`` says whether
    client k holds modality m at all (at least one of its samples has it).
    """

    ids: np.ndarray
    client: np.ndarray
    available: dict[str, np.ndarray]
    client_modalities: dict[str, np.ndarray]
    num_clients: int


def write_assignments(path: Path, ids: pa.Array, client: np.ndarray, available: dict[str, np.ndarray]) -> None:
    """assignments.parquet: id, client int32, one bool column per modality."""
    columns = {"id": ids.cast(pa.string()), "client": pa.array(client, pa.int32())}
    columns.update({m: pa.array(mask, pa.bool_()) for m, mask in available.items()})
    atomic_write_parquet(path, pa.table(columns))


def write_clients(
    path: Path, sizes: np.ndarray, groups: list[str] | None, client_modalities: dict[str, np.ndarray]
) -> None:
    """clients.parquet: client int32, n_samples int64, group string (null unless natural), one bool
    column per modality (client holds it at all)."""
    num_clients = len(sizes)
    columns = {
        "client": pa.array(np.arange(num_clients), pa.int32()),
        "n_samples": pa.array(sizes, pa.int64()),
        "group": pa.array(groups if groups is not None else [None] * num_clients, pa.string()),
    }
    columns.update({m: pa.array(held, pa.bool_()) for m, held in client_modalities.items()})
    atomic_write_parquet(path, pa.table(columns))


def _read(artifact: Artifact, relpath: str, columns: list[str]) -> pa.Table:
    path = artifact.file(relpath)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ArtifactError(f"partition {artifact.path}: cannot read {relpath} ({exc}); {_RECREATE}.") from exc
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ArtifactError(f"partition {artifact.path}: {relpath} lacks columns {missing}; {_RECREATE}.")
    return table


def read_partition(artifact: Artifact) -> PartitionData:
    """Load a partition artifact (from ``Workspace.resolve("partition", ...)`` / ``load_artifact``)."""
    if artifact.kind != "partition":
        raise ArtifactError(f"{artifact.path} is a {artifact.kind}, not a partition; `cmi partition` makes one.")
    modalities = list(artifact.manifest["modalities"])
    num_clients = int(artifact.manifest["num_clients"])
    assignments = _read(artifact, PARTITION_ASSIGNMENTS, ["id", "client", *modalities])
    clients = _read(artifact, PARTITION_CLIENTS, ["client", *modalities]).sort_by("client")
    client = assignments.column("client").to_numpy().astype(np.int32)
    if clients.num_rows != num_clients or (len(client) and not 0 <= client.min() <= client.max() < num_clients):
        raise ArtifactError(
            f"partition {artifact.path}: clients do not match num_clients={num_clients}; {_RECREATE}."
        )
    return PartitionData(
        ids=assignments.column("id").to_numpy().astype(str),
        client=client,
        available={m: assignments.column(m).to_numpy() for m in modalities},
        client_modalities={m: clients.column(m).to_numpy() for m in modalities},
        num_clients=num_clients,
    )
