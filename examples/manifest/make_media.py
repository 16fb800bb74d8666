"""Write the example's media (media/*.wav, media/*.png) next to manifest.csv.

    python examples/manifest/make_media.py

Birds chirp (short rising tones around 3 kHz) and show a green photo; sirens sweep slowly
between 600 and 1200 Hz and show a red photo. Each file gets some noise, so the two classes are
learnable but not identical copies. Files named in manifest.csv only (empty cells stay absent).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000


def bird(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(2.0 * SAMPLE_RATE)) / SAMPLE_RATE
    within = (t * 4) % 1.0  # four chirps a second
    pitch = 2500 + 1500 * within + rng.normal(0, 100)
    return np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE) * (within < 0.4)


def siren(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(2.0 * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 900 + 300 * np.sin(2 * np.pi * (0.5 + rng.uniform(-0.1, 0.1)) * t)
    return np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE)


COLOURS = {"bird": (60, 150, 70), "siren": (190, 50, 40)}
SOUNDS = {"bird": bird, "siren": siren}


def main(folder: Path = HERE) -> None:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for index, row in enumerate(rows):
        rng = np.random.default_rng(index)
        if row["audio"]:
            wave = 0.4 * SOUNDS[row["label"]](rng) + rng.normal(0, 0.05, 2 * SAMPLE_RATE)
            path = folder / row["audio"]
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(str(path), wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        if row["photo"]:
            pixels = np.clip(np.array(COLOURS[row["label"]]) + rng.normal(0, 30, (48, 64, 3)), 0, 255)
            path = folder / row["photo"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)


if __name__ == "__main__":
    main()
