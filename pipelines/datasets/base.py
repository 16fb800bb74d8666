"""What every dataset loader produces: an ordered listing of samples, plus the helpers they share.

A loader reads a dataset's metadata and split files (never its media) and returns a
:class:`Listing`: the class names, the modalities and where each comes from, and one
:class:`Sample` per sample in a deterministic order. Rows that cannot become a sample (a
duplicate id, an empty event window, an unknown label) are returned as :class:`Reject` rows with
a reason, so nothing is dropped silently. `pipelines.prepare` turns a listing into shards.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipelines.errors import CmiError
from pipelines.shards import SPLITS

#: environment variable that supplies ``--root``
DATA_ROOT_ENV = "CMI_DATA_ROOT"

#: where a modality's payload comes from: an audio track, video frames, a still image, text, or a
#: numeric array file (.npy/.npz/.csv/.tsv, pipelines.extractors.arrays)
SOURCE_KINDS = ("audio", "frames", "image", "array", "text")

#: how validation is carved from train (``--val-by``): class-stratified samples, or whole groups
VAL_BY = ("random", "group")
#: the share of train carved out as val when ``--val-fraction`` is not given
DEFAULT_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class ModalitySource:
    """A modality of a listing: its name in the shards and the kind of source it is read from."""

    name: str
    source: str

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"modality source must be one of {SOURCE_KINDS}, got {self.source!r}")


@dataclass(frozen=True)
class Sample:
    """One sample to prepare.

    ``media`` maps a modality name to its file (absolute path); a text modality reads ``text``
    instead. A modality missing from ``media`` is absent in the raw data itself (kept absent, not
    a reject). ``window`` is an event window (start, end) in seconds inside the media, if any.
    """

    id: str
    label: int
    split: str
    group: str | None
    media: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    window: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reject:
    """A sample (modality ``None``) or one modality of a sample that could not be prepared."""

    id: str
    split: str
    modality: str | None
    path: str | None
    reason: str
    sample_dropped: bool = True


@dataclass
class Listing:
    """A dataset's samples in their fixed order, ready to be prepared."""

    dataset: str
    root: Path
    classes: list[str]
    modalities: list[ModalitySource]
    samples: list[Sample]
    rejects: list[Reject] = field(default_factory=list)
    #: loader options and facts worth recording in the manifest (split method, task, ...)
    info: dict[str, Any] = field(default_factory=dict)
    #: extractor defaults that differ per dataset (e.g. AVE audio is tiled to 10 s)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: modality -> folder that must exist for it (checked once, before any sample is read)
    media_dirs: dict[str, Path] = field(default_factory=dict)
    #: the expected on-disk layout, shown in errors
    layout: str = ""
    #: what a sample's ``group`` is, for messages ("actor", "event"); samples without groups: unused
    group_name: str = "group"

    @property
    def has_text(self) -> bool:
        """Whether the samples carry text (then shards get a ``text`` column)."""
        return any(s.text is not None for s in self.samples)

    def select(self, names: Sequence[str]) -> "Listing":
        """The same listing restricted to the modalities ``names`` (in listing order)."""
        known = [m.name for m in self.modalities]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise CmiError(
                f"{self.dataset} has no modality {', '.join(map(repr, unknown))}; "
                f"choose among {', '.join(known)} with --modalities."
            )
        keep = [m for m in self.modalities if m.name in names]
        samples = [replace(s, media={k: v for k, v in s.media.items() if k in names}) for s in self.samples]
        dirs = {k: v for k, v in self.media_dirs.items() if k in names}
        return replace(self, modalities=keep, samples=samples, media_dirs=dirs)


# ----------------------------------------------------------------------------- shared helpers


def resolve_root(root: str | os.PathLike | None, dataset: str, layout: str) -> Path:
    """The dataset root given by ``--root`` or ``$CMI_DATA_ROOT``; a CmiError showing ``layout`` if
    none is given or it does not exist."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ROOT_ENV) or None
    if root is None:
        raise layout_error(dataset, None, f"no dataset root given: pass --root DIR or set {DATA_ROOT_ENV}", layout)
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise layout_error(dataset, path, f"{path} does not exist", layout)
    return path


def layout_error(dataset: str, root: Path | None, problem: str, layout: str) -> CmiError:
    where = f" (--root {root})" if root is not None else ""
    return CmiError(
        f"cannot read {dataset}{where}: {problem}.\n"
        f"Point --root (or {DATA_ROOT_ENV}) at a folder laid out like this:\n{layout.rstrip()}"
    )


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, tolerant of a UTF-8 BOM, CRLF line ends and a missing
    final newline (all present in the real split files)."""
    text = path.read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def carve_validation(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Move a seeded, class-stratified ``fraction`` of the train samples to ``val`` (``--val-by random``).

    Per class, ``round(fraction * n_train_c)`` samples are drawn without replacement with
    ``numpy.random.default_rng(seed)``; the order of ``samples`` is unchanged.
    """
    _check_fraction(fraction)
    if fraction == 0.0:
        return list(samples)
    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    is_train = np.array([s.split == "train" for s in samples])
    to_val = np.zeros(len(samples), dtype=bool)
    for c in np.unique(labels[is_train]):
        idx = np.flatnonzero(is_train & (labels == c))
        take = int(round(fraction * idx.size))
        to_val[rng.choice(idx, size=take, replace=False)] = True
    return [replace(s, split="val") if v else s for s, v in zip(samples, to_val)]


def carve_group_validation(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Move whole groups of train samples to ``val`` (``--val-by group``), so no val group is in train.

    ``fraction`` is a share of the train *samples*, met as closely as whole groups allow. The
    distinct groups of the train samples (sorted) are shuffled with
    ``numpy.random.default_rng(seed).permutation`` and walked in that order: a group joins val when
    adding its train samples brings val's count strictly closer to ``fraction * n_train`` (and
    leaves train a group). If no group does (each is at least twice that target), the smallest
    one (first in the shuffled order among equals) goes to val, so val is never empty. With groups
    of similar size this is about ``fraction`` of the groups too; with a few uneven ones (CrisisMMD's
    7 events) the share can be well off. Every train sample of the chosen groups moves to val; val
    and test samples are left as they are (fold given val rows into train first:
    :func:`recarve_validation`), and the order of ``samples`` is unchanged. ``fraction`` 0 changes
    nothing. Deterministic for a given ``seed``.

    Raises CmiError when ``fraction`` is outside [0, 1), a train sample has no group, or train has
    fewer than two groups.
    """
    _check_fraction(fraction)
    if fraction == 0.0:
        return list(samples)
    is_train = np.array([s.split == "train" for s in samples], dtype=bool)
    train = [s for s in samples if s.split == "train"]
    ungrouped = [s.id for s in train if s.group is None]
    if ungrouped:
        raise CmiError(
            f"--val-by group needs a group for every train sample, but {len(ungrouped)} of {len(train)} have none "
            f"(e.g. {ungrouped[0]!r}): give each one (manifest: fill its `group` cell) or use --val-by random."
        )
    groups, inverse, sizes = np.unique(np.array([s.group for s in train], dtype=str), return_inverse=True,
                                       return_counts=True)
    if groups.size < 2:
        only = f" ({str(groups[0])!r})" if groups.size else ""
        raise CmiError(
            f"--val-by group needs at least two groups in train (one for val, one left for training); train has "
            f"{groups.size}{only}. Give the samples more groups or use --val-by random."
        )
    target = fraction * len(train)
    order = np.random.default_rng(seed).permutation(groups.size)
    chosen = np.zeros(groups.size, dtype=bool)
    taken = 0
    for g in order:
        if abs(taken + sizes[g] - target) < abs(taken - target) and taken + sizes[g] < len(train):
            chosen[g] = True
            taken += sizes[g]
    if not chosen.any():
        chosen[order[np.argmin(sizes[order])]] = True
    to_val = np.zeros(len(samples), dtype=bool)
    to_val[is_train] = chosen[inverse.reshape(-1)]
    return [replace(s, split="val") if v else s for s, v in zip(samples, to_val)]


def carve_by(samples: list[Sample], val_by: str, fraction: float, seed: int) -> list[Sample]:
    """Carve val out of train by ``val_by``: ``random`` (:func:`carve_validation`) or ``group``
    (:func:`carve_group_validation`)."""
    carve = carve_group_validation if check_val_by(val_by) == "group" else carve_validation
    return carve(samples, fraction, seed)


def check_val_by(val_by: str | None) -> str | None:
    """``val_by`` itself if it is None or one of :data:`VAL_BY`; a CmiError otherwise."""
    if val_by is not None and val_by not in VAL_BY:
        raise CmiError(f"--val-by must be one of {', '.join(VAL_BY)}, got {val_by!r}.")
    return val_by


def recarve_validation(samples: list[Sample], fraction: float | None, seed: int, *, given: str) -> list[Sample]:
    """``--val-by group`` on a dataset whose files already give val rows (``given`` names them, e.g.
    "crisismmd's dev split files"): never done silently.

    Without an explicit ``fraction`` a CmiError says how to keep the given split (drop --val-by) or
    replace it (add --val-fraction). With one, every val sample moves to train and val is carved from
    whole groups of that union by :func:`carve_group_validation`; test is untouched.
    """
    if fraction is None:
        raise CmiError(
            f"{given} already give a validation split, and --val-by group would replace it. Drop --val-by to keep "
            "it, or pass --val-fraction F as well to move those rows to train and carve val from whole groups "
            "(about F of the resulting train samples)."
        )
    merged = [replace(s, split="train") if s.split == "val" else s for s in samples]
    return carve_group_validation(merged, fraction, seed)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise CmiError(f"--val-fraction must be in [0, 1), got {fraction}.")


def check_split(value: str, where: str) -> str:
    if value not in SPLITS:
        raise CmiError(f"{where}: split {value!r} is not one of {', '.join(SPLITS)}; fix the split value.")
    return value
