"""CREMA-D: 7,442 audio-visual clips of 91 actors speaking with 6 emotions.

Samples come from the modality-imbalance literature's split (shipped with cmi as package data,
because it is not part of the CREMA-D release): 6,698 train and 744 test clips. Its split files
have CRLF line ends and ``split-stat.csv`` a UTF-8 BOM; they are read as they are.

* **Classes** keep that split's order, ``NEU HAP SAD FEA DIS ANG`` (label 0..5), so label indices
  match the literature's code.
* **Validation**: the literature has train/test only, so ``val_fraction`` (default 10%) of the
  train clips is moved to ``val`` with ``numpy.random.default_rng(seed)``: by default
  (``val_by="random"``) stratified by emotion, which puts the training actors in val too; with
  ``val_by="group"`` whole actors (about ``val_fraction`` of the train clips), so val is
  actor-disjoint from train (see :func:`~pipelines.datasets.base.carve_group_validation`).
* **Actor-disjoint split** (``split="actor"``): the 91 actors are shuffled with the seed;
  ``round(test_fraction * 91)`` actors go to test, ``round(val_fraction * 91)`` to val, the rest to
  train (defaults 10% / 10% / 80%: 9 / 9 / 73 actors). Val is actor-disjoint by construction, so
  ``val_by`` is recorded as ``"group"``; ``val_by="random"`` is refused.
* **Group** = actor id (``"1001"``), for natural (per-speaker) partitions.
* Samples are ordered by clip name.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import replace
from pathlib import Path
from typing import Collection

import numpy as np

from pipelines.datasets.base import (
    DEFAULT_VAL_FRACTION, Listing, ModalitySource, Sample, carve_by, layout_error, read_lines, resolve_root,
)
from pipelines.errors import CmiError

LAYOUT = """\
  ROOT/
    AudioWAV/1001_DFA_ANG_XX.wav     16 kHz mono WAV, one per clip (7,442)
    VideoFlash/1001_DFA_ANG_XX.flv   FLV video, one per clip (7,442)
    (AudioMP3/ and the metadata CSVs may be there too; they are not read)
  The clip list and the literature split ship with cmi."""

AUDIO_DIR = "AudioWAV"
VIDEO_DIR = "VideoFlash"
SPLIT_METHODS = ("literature", "actor")
CLIP_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")
MODALITIES = [ModalitySource("audio", "audio"), ModalitySource("visual", "frames")]


def _package_lines(name: str) -> list[str]:
    return read_lines(Path(str(importlib.resources.files("pipelines") / "data" / name)))


def literature_classes() -> list[str]:
    """Class order of the literature split (``split-stat.csv``): NEU HAP SAD FEA DIS ANG."""
    return _package_lines("cremad_split_stat.csv")


def literature_split() -> dict[str, list[tuple[str, str]]]:
    """``{"train": [(clip, emotion), ...], "test": [...]}`` from the shipped split files."""
    return {
        split: [tuple(line.split(",")) for line in _package_lines(f"cremad_split_{split}.csv")]  # type: ignore[misc]
        for split in ("train", "test")
    }


def parse_clip(clip: str) -> re.Match:
    match = CLIP_NAME.match(clip)
    if match is None:
        raise ValueError(f"not a CREMA-D clip name: {clip!r}")
    return match


def load(
    root: str | Path | None,
    *,
    split: str = "literature",
    val_by: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = 0.1,
    seed: int = 0,
    clips: Collection[str] | None = None,
    dataset: str = "cremad",
) -> Listing:
    """List CREMA-D's clips under ``root``.

    ``clips`` restricts the listing to those clip names (the synthetic dataset uses it: it
    generates a subset of CREMA-D under the real names). Media files are not opened here.
    ``val_by`` (None: ``"random"``, or ``"group"`` with ``split="actor"``) says how val is carved
    from train; ``"random"`` with ``split="actor"`` is a CmiError.
    """
    root_path = resolve_root(root, dataset, LAYOUT)
    if not (root_path / AUDIO_DIR).is_dir() and not (root_path / VIDEO_DIR).is_dir():
        raise layout_error(dataset, root_path, f"neither {AUDIO_DIR}/ nor {VIDEO_DIR}/ is there", LAYOUT)
    if split not in SPLIT_METHODS:
        raise CmiError(f"--split must be one of {', '.join(SPLIT_METHODS)}, got {split!r}.")
    if split == "actor" and val_by == "random":
        raise CmiError(
            "--val-by random does not apply with --split actor: the actor split puts whole actors in val, so val "
            "is always actor-disjoint from train (--val-by group). Drop --val-by random, or use --split literature "
            "for a class-stratified random val."
        )

    classes = literature_classes()
    index = {name: i for i, name in enumerate(classes)}
    entries = [(clip, emo, s) for s, rows in literature_split().items() for clip, emo in rows]
    if clips is not None:
        wanted = set(clips)
        unknown = wanted - {clip for clip, _, _ in entries}
        if unknown:
            raise CmiError(f"{len(unknown)} clip names are not CREMA-D clips (e.g. {sorted(unknown)[0]!r}).")
        entries = [e for e in entries if e[0] in wanted]
    entries.sort()

    samples = [
        Sample(
            id=clip,
            label=index[emo],
            split=s,
            group=parse_clip(clip)["actor"],
            media={"audio": str(root_path / AUDIO_DIR / f"{clip}.wav"), "visual": str(root_path / VIDEO_DIR / f"{clip}.flv")},
        )
        for clip, emo, s in entries
    ]
    if split == "literature":
        val_by = val_by or "random"
        samples = carve_by(samples, val_by, val_fraction, seed)
        options = {"split": split, "val_by": val_by, "val_fraction": val_fraction, "seed": seed}
    else:
        samples = actor_split(samples, val_fraction, test_fraction, seed)
        options = {"split": split, "val_by": "group", "val_fraction": val_fraction, "test_fraction": test_fraction,
                   "seed": seed}
    return Listing(
        dataset=dataset,
        layout=LAYOUT,
        root=root_path,
        classes=classes,
        modalities=list(MODALITIES),
        samples=samples,
        info=options,
        defaults={"audio_duration": 3.0},
        media_dirs={"audio": root_path / AUDIO_DIR, "visual": root_path / VIDEO_DIR},
        group_name="actor",
    )


def actor_split(samples: list[Sample], val_fraction: float, test_fraction: float, seed: int) -> list[Sample]:
    """Assign whole actors (``group``) to test / val / train with a seeded shuffle."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CmiError(
            f"--val-fraction ({val_fraction}) and --test-fraction ({test_fraction}) must be in [0, 1) "
            "and leave actors for training."
        )
    actors = sorted({s.group for s in samples})
    order = np.random.default_rng(seed).permutation(len(actors))
    n_test = int(round(test_fraction * len(actors)))
    n_val = int(round(val_fraction * len(actors)))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[actors[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return [replace(s, split=split_of[s.group]) for s in samples]
