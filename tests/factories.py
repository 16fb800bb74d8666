"""Small artifacts built directly in a test's workspace, for stages that need an input without
running the stage before them. Real layouts come from `cmi prepare synthetic` in the
end-to-end tests; these are for fast unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipelines.artifacts import Artifact, Workspace, load_artifact, write_manifest
from pipelines.shards import SHARD_DIR, ModalitySpec, build_table, write_shard

DEFAULT_SPECS = (
    ModalitySpec("audio", "spectrogram", (8, 12), "float32"),
    ModalitySpec("visual", "frames", (2, 8, 8, 3), "uint8"),
)


def make_dataset(
    workspace: Workspace,
    name: str = "toy",
    *,
    classes: Sequence[str] = ("a", "b", "c"),
    per_class: dict[str, int] | None = None,
    specs: Sequence[ModalitySpec] = DEFAULT_SPECS,
    groups: int = 4,
    absent: dict[str, float] | None = None,
    signal: dict[str, float] | None = None,
    seed: int = 0,
    rows_per_shard: int = 64,
) -> Artifact:
    """A complete dataset artifact with random payloads.

    ``per_class`` maps split -> samples per class (default train 20, val 5, test 5).
    ``absent`` maps modality -> fraction of samples whose payload is marked absent.
    ``signal`` maps modality -> strength of a class-dependent offset added to the payload
    (so a model can learn from it); without it payloads are pure noise.
    """
    per_class = per_class or {"train": 20, "val": 5, "test": 5}
    rng = np.random.default_rng(seed)
    ids, labels, splits, grp = [], [], [], []
    for split, n in per_class.items():
        for c in range(len(classes)):
            for i in range(n):
                ids.append(f"{split}-{c}-{i:05d}")
                labels.append(c)
                splits.append(split)
                grp.append(f"g{(i + c) % groups}")
    n_total = len(ids)
    order = rng.permutation(n_total)
    ids = [ids[i] for i in order]
    labels = np.asarray(labels, dtype=np.int32)[order]
    splits = [splits[i] for i in order]
    grp = [grp[i] for i in order]

    payloads, present = {}, {}
    for spec in specs:
        shape = (n_total, *spec.shape)
        if np.dtype(spec.dtype) == np.uint8:
            data = rng.integers(0, 256, size=shape).astype(np.float32)
        else:
            data = rng.standard_normal(shape).astype(np.float32)
        strength = (signal or {}).get(spec.name, 0.0)
        if strength:
            flat = data.reshape(n_total, -1)
            pattern = np.random.default_rng(1000 + len(spec.name)).standard_normal((len(classes), flat.shape[1]))
            scale = 40.0 if np.dtype(spec.dtype) == np.uint8 else 1.0
            flat += strength * scale * pattern[labels]
        if np.dtype(spec.dtype) == np.uint8:
            data = np.clip(data, 0, 255)
        mask = rng.random(n_total) >= (absent or {}).get(spec.name, 0.0)
        data[~mask] = 0
        payloads[spec.name] = data.astype(spec.dtype)
        present[spec.name] = mask

    directory = workspace.artifact_dir("dataset", name)
    shard_files = []
    for k, start in enumerate(range(0, n_total, rows_per_shard)):
        sl = slice(start, start + rows_per_shard)
        table = build_table(
            specs, ids[sl], labels[sl], splits[sl], grp[sl],
            {m: a[sl] for m, a in payloads.items()}, {m: a[sl] for m, a in present.items()},
        )
        rel = f"{SHARD_DIR}/part-{k:05d}.parquet"
        write_shard(table, directory / rel)
        shard_files.append(rel)
    counts = {s: int(sum(1 for x in splits if x == s)) for s in ("train", "val", "test")}
    write_manifest(
        directory, "dataset", {"dataset": name, "seed": seed}, files=shard_files,
        extra={
            "dataset": name,
            "classes": list(classes),
            "modalities": [s.to_dict() for s in specs],
            "shards": shard_files,
            "counts": counts,
            "rejects": 0,
        },
    )
    workspace.set_latest("dataset", name)
    return load_artifact(directory, "dataset")


def tmp_workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")
