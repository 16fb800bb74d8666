#!/usr/bin/env python
"""Write a small three-modality dataset made of signals, and its manifest.csv, for `cmi prepare manifest`.

A toy activity-recognition set: each sample is one activity window of a subject (the `group`, for
natural splits) seen by three modalities:

- ``accel``: accelerometer, a CSV file per sample, one time step a row (x, y, z; header row),
  48 to 64 steps: a sine per axis whose frequency depends on the class, plus noise;
- ``gyro``: gyroscope, a CSV file per sample (x, y, z), same length: a class-dependent offset on
  one axis and a slow drift, plus noise;
- ``feat``: a per-sample feature vector (``.npy``, 16 floats), e.g. what an upstream model or
  hand-made statistics computed: a class-dependent mean plus noise.

Each modality alone predicts the class above chance but not perfectly (the noise is set so), so
the unimodal paths, the fused path and missing modalities make a difference. Deterministic for a
``--seed``. With ``--absent`` a fraction of the cells is left empty: that sample really has no such
modality (never all three).

    python examples/three-modality/make_dataset.py OUT [--per-class 60] [--seed 0]
    cmi prepare manifest --root OUT/manifest.csv --array-length 64

Needs only numpy. See README.md next to this file for the whole pipeline.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

CLASSES = ("walk", "run", "rest")
MODALITIES = ("accel", "gyro", "feat")
#: time steps of a window: each sample draws its length in [MIN_STEPS, MAX_STEPS]
MIN_STEPS, MAX_STEPS = 48, 64
FEATURES = 16
SUBJECTS = 6
#: samples per class in val and test for every `--per-class` train samples
VAL_SHARE, TEST_SHARE = 0.2, 0.3
#: noise standard deviation of each modality: the larger, the weaker the modality alone
NOISE = {"accel": 1.0, "gyro": 1.2, "feat": 1.6}
#: cycles per time step of the accelerometer's sine, per class
FREQUENCY = (0.06, 0.16, 0.0)
#: the gyroscope's offset on the class's axis (averaged over a window, it stands out of the noise)
GYRO_OFFSET = 0.5


def accel(label: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """(steps, 3): a sine per axis at the class's frequency (a constant 1 g on z for `rest`)."""
    t = np.arange(steps)[:, None]
    phase = rng.uniform(0, 2 * np.pi)
    amplitude = np.array([1.0, 0.6, 0.3]) * (0.0 if FREQUENCY[label] == 0 else 1.5)
    signal = amplitude * np.sin(2 * np.pi * FREQUENCY[label] * t + phase + np.array([0.0, 1.0, 2.0]))
    signal[:, 2] += 1.0 if FREQUENCY[label] == 0 else 0.0
    return signal + NOISE["accel"] * rng.standard_normal((steps, 3))


def gyro(label: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """(steps, 3): an offset on the class's axis and a slow random drift."""
    offset = np.zeros(3)
    offset[label] = GYRO_OFFSET
    drift = np.cumsum(0.05 * rng.standard_normal((steps, 3)), axis=0)
    return offset + drift + NOISE["gyro"] * rng.standard_normal((steps, 3))


def features(label: int, rng: np.random.Generator, means: np.ndarray) -> np.ndarray:
    """(FEATURES,): the class mean plus noise."""
    return means[label] + NOISE["feat"] * rng.standard_normal(FEATURES)


def write_table(path: Path, signal: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "y", "z"])
        writer.writerows([[f"{v:.5f}" for v in row] for row in signal])


def make_dataset(out: Path, per_class: int = 60, seed: int = 0, absent: float = 0.0) -> Path:
    """Write the media under ``out/media`` and ``out/manifest.csv``; return the manifest's path."""
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    if not 0 <= absent < 1:
        raise ValueError("absent must lie in [0, 1)")
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1000 + seed).standard_normal((len(CLASSES), FEATURES))
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    counts = {"train": per_class, "val": max(1, round(VAL_SHARE * per_class)),
              "test": max(1, round(TEST_SHARE * per_class))}
    rows = []
    for split, n in counts.items():
        for label, name in enumerate(CLASSES):
            for i in range(n):
                sample = f"{name}-{split}-{i:03d}"
                steps = int(rng.integers(MIN_STEPS, MAX_STEPS + 1))
                cells = {"accel": f"media/{sample}-accel.csv", "gyro": f"media/{sample}-gyro.csv",
                         "feat": f"media/{sample}-feat.npy"}
                write_table(out / cells["accel"], accel(label, steps, rng))
                write_table(out / cells["gyro"], gyro(label, steps, rng))
                np.save(out / cells["feat"], features(label, rng, means).astype(np.float32))
                if absent:  # empty cells: the sample has no such modality (it keeps at least one)
                    drop = [m for m in MODALITIES if rng.random() < absent]
                    for m in drop[: len(MODALITIES) - 1]:
                        (out / cells[m]).unlink()
                        cells[m] = ""
                rows.append({"id": sample, "label": name, "split": split,
                             "group": f"subject-{int(rng.integers(SUBJECTS))}", **cells})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "label", "split", "group", *MODALITIES])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write manifest.csv and media/ into")
    parser.add_argument("--per-class", type=int, default=60,
                        help="training samples per class (val: 20%%, test: 30%% of it per class); default 60")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw; default 0")
    parser.add_argument("--absent", type=float, default=0.0,
                        help="fraction of cells left empty (the sample has no such modality); default 0")
    args = parser.parse_args()
    manifest = make_dataset(args.out, args.per_class, args.seed, args.absent)
    samples = sum(1 for _ in manifest.open()) - 1
    print(f"wrote {manifest} ({samples} samples, modalities {', '.join(MODALITIES)}, classes {', '.join(CLASSES)})")
    print(f"next: cmi prepare manifest --root {manifest} --array-length {MAX_STEPS}")


if __name__ == "__main__":
    main()
