"""The CREMA-D-sized workload shared by the training benchmarks: CREMA-D's literature split
(6,698 train, 744 test clips), 6 emotions, a (257, 137) float32 STFT spectrogram and 3 frames of
112x112x3 uint8 per clip (the frame size of the modality-imbalance papers)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the benchmarks run as scripts from a checkout

from pipelines.shards import ModalitySpec  # noqa: E402

SPECS = [ModalitySpec("audio", "spectrogram", (257, 137), "float32"),
         ModalitySpec("visual", "frames", (3, 112, 112, 3), "uint8")]
CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
TRAIN_SAMPLES = 6698
EVAL_SAMPLES = 744
