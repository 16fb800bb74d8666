"""Bring your own dataset: a CSV that lists the samples.

Columns ``id,label,split`` (``split`` is ``train``, ``val`` or ``test``), an optional ``group``
(natural-partition key, e.g. speaker or site), and one column per modality. A modality cell is a
file path (relative to the CSV's folder, or absolute) or, for a text modality, the text itself.
An empty cell means the sample has no such modality in the raw data: it is kept with that
modality absent (it is not a reject).

A modality's kind is inferred from its column: file extensions ``.wav .flac .ogg .mp3 .m4a`` ->
``audio`` (spectrogram), ``.mp4 .flv .avi .mkv .mov .webm`` -> ``frames``, ``.jpg .jpeg .png .bmp
.webp .gif .tif .tiff`` -> ``image``, ``.npy .npz .csv .tsv`` -> ``array`` (a numeric vector or
sequence per sample, see :mod:`pipelines.extractors.arrays`), anything else -> ``text``. The
extensions are those of the cells' files (the manifest itself being a CSV does not matter).
``--modality NAME=KIND`` sets it explicitly (and then only the named modalities are used);
``NAME=KIND@COLUMN`` reads another column, e.g. ``--modality audio=audio@video --modality
visual=frames@video`` takes both the audio track and the frames of one video column. An array
modality may name the array of its ``.npz`` files: ``NAME=array:KEY`` or ``NAME=array:KEY@COLUMN``
(without a key an ``.npz`` must hold exactly one array). Classes are the sorted distinct labels.

Validation: when the CSV has no ``val`` rows, ``val_fraction`` (default 0.1) of train becomes
``val``, seeded: class-stratified (``val_by="random"``, the default) or whole groups
(``val_by="group"``: no val group is in train; needs a ``group`` on every train row, see
:func:`~pipelines.datasets.base.carve_group_validation`). When the CSV has ``val`` rows they are
kept as they are (``val_fraction`` is then unused), except with ``val_by="group"``: that alone is
a CmiError (cmi does not silently rewrite a given split), and together with an explicit
``val_fraction`` the val rows move to train and val is carved from whole groups.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipelines.datasets.base import (
    DEFAULT_VAL_FRACTION, Listing, ModalitySource, Sample, carve_by, check_split, check_val_by, layout_error,
    recarve_validation, resolve_root,
)
from pipelines.errors import CmiError

LAYOUT = """\
  ROOT                 a CSV file, or a folder holding manifest.csv
    id,label,split,group,audio,visual,caption
    s001,dog,train,site-a,media/s001.wav,media/s001.mp4,"a dog barks"
    s002,cat,test,site-b,media/s002.wav,,"a cat"       (empty cell: modality absent)
  required columns: id, label, split (train|val|test); optional: group; every other column is a
  modality (file path relative to the CSV, or text; .npy/.npz/.csv/.tsv files: numeric arrays)."""

DEFAULT_FILE = "manifest.csv"
REQUIRED = ("id", "label", "split")
RESERVED = REQUIRED + ("group",)
#: shard column names a modality cannot take (``text`` holds the cleaned text of a text modality)
RESERVED_NAMES = RESERVED + ("text",)
EXTENSION_KINDS = {
    "audio": (".wav", ".flac", ".ogg", ".mp3", ".m4a"),
    "frames": (".mp4", ".flv", ".avi", ".mkv", ".mov", ".webm"),
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"),
    # numeric vectors / sequences (pipelines.extractors.arrays.ARRAY_SUFFIXES)
    "array": (".npy", ".npz", ".csv", ".tsv"),
}
#: the kinds ``--modality NAME=KIND`` accepts
KINDS = ("audio", "frames", "image", "array", "text")
SYNTAX = "NAME=KIND, NAME=KIND@COLUMN, NAME=array:KEY or NAME=array:KEY@COLUMN"


@dataclass(frozen=True)
class ModalityOption:
    """A parsed ``--modality NAME=KIND[:KEY][@COLUMN]`` (``KEY``: the ``.npz`` array of an array modality)."""

    name: str
    kind: str
    column: str
    key: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModalityOption":
        name, sep, rest = text.partition("=")
        kind, _, column = rest.partition("@")
        kind, colon, key = kind.partition(":")
        name, kind, column, key = name.strip(), kind.strip(), column.strip(), key.strip()
        if not sep or not name or kind not in KINDS:
            raise CmiError(
                f"--modality {text!r}: expected {SYNTAX} with KIND one of {', '.join(KINDS)} "
                "(e.g. --modality audio=audio@video, --modality ecg=array:signal@ecg_file)."
            )
        if colon and (kind != "array" or not key):
            raise CmiError(
                f"--modality {text!r}: only an array modality takes a key, the name of the array in its .npz "
                "files (e.g. --modality ecg=array:signal@ecg_file)."
            )
        return cls(name, kind, column or name, key or None)


def infer_kind(values: Sequence[str]) -> str:
    """The source kind of a modality column from its non-empty cells (see module docstring)."""
    cells = [v for v in values if v]
    for kind, extensions in EXTENSION_KINDS.items():
        if cells and all(Path(v).suffix.lower() in extensions for v in cells):
            return kind
    return "text"


def csv_path(root: Path) -> Path:
    path = root / DEFAULT_FILE if root.is_dir() else root
    if not path.is_file():
        raise layout_error("manifest", root, f"{DEFAULT_FILE} not found in that folder", LAYOUT)
    return path


def load(
    root: str | Path | None,
    *,
    modalities: Sequence[str] = (),
    val_by: str | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    dataset: str = "manifest",
) -> Listing:
    """List the samples of a user's manifest CSV (``root`` is the CSV or its folder).

    ``val_by`` None means ``"random"``; ``val_fraction`` None means 0.1 (see the module docstring
    for when it applies)."""
    path = csv_path(resolve_root(root, dataset, LAYOUT))
    base = path.parent
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise layout_error(dataset, path, f"column(s) {', '.join(missing)} missing (found: {', '.join(header) or 'none'})", LAYOUT)

    if modalities:
        chosen = [ModalityOption.parse(m) for m in modalities]
    else:
        columns = [c for c in header if c not in RESERVED]
        chosen = [ModalityOption(c, infer_kind([(r.get(c) or "").strip() for r in rows]), c) for c in columns]
    _check_modalities(chosen, header, path)

    labels = sorted({(r.get("label") or "").strip() for r in rows} - {""})
    index = {name: i for i, name in enumerate(labels)}
    seen: dict[str, int] = {}
    samples = []
    for number, row in enumerate(rows, start=2):
        where = f"{path.name} line {number}"
        sample_id = (row.get("id") or "").strip()
        label = (row.get("label") or "").strip()
        if not sample_id or not label:
            raise CmiError(f"{where}: empty id or label; every row needs both.")
        if sample_id in seen:
            raise CmiError(f"{where}: id {sample_id!r} already used on line {seen[sample_id]}; ids must be unique.")
        seen[sample_id] = number
        media, text = {}, None
        for option in chosen:
            cell = (row.get(option.column) or "").strip()
            if not cell:
                continue
            if option.kind == "text":
                text = cell
            else:
                media[option.name] = str((base / cell).resolve())
        samples.append(Sample(
            id=sample_id,
            label=index[label],
            split=check_split((row.get("split") or "").strip(), where),
            group=(row.get("group") or "").strip() or None,
            media=media,
            text=text,
        ))
    if check_val_by(val_by) == "group" and "group" not in header:
        raise CmiError(
            f"{path.name} has no group column, and --val-by group carves val from whole groups: add a `group` "
            "column (speaker, site, patient, ...), or use --val-by random."
        )
    if not any(s.split == "val" for s in samples):
        val_by = val_by or "random"
        val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        samples = carve_by(samples, val_by, val_fraction, seed)
        split = "manifest (val carved from train)"
    elif val_by == "group":
        samples = recarve_validation(samples, val_fraction, seed, given=f"{path.name}'s val rows")
        split = "manifest (val rows moved to train, val carved by group)"
    else:
        val_by, val_fraction, split = None, None, "manifest"
    sources = [ModalitySource(o.name, o.kind) for o in chosen]
    keys = {o.name: o.key for o in chosen if o.key is not None}
    return Listing(
        dataset=dataset,
        layout=LAYOUT,
        root=path,
        classes=labels,
        modalities=sources,
        samples=samples,
        info={
            "split": split,
            "val_by": val_by,
            "val_fraction": val_fraction,
            "seed": seed,
            "columns": {o.name: o.column for o in chosen},
        },
        defaults={"array_keys": keys} if keys else {},
    )


def _check_modalities(chosen: list[ModalityOption], header: list[str], path: Path) -> None:
    if not chosen:
        raise CmiError(f"{path} has no modality column; add one column per modality besides {', '.join(RESERVED)}.")
    names = [o.name for o in chosen]
    if len(set(names)) != len(names) or set(names) & set(RESERVED_NAMES):
        raise CmiError(
            f"modality names must be distinct and not one of {', '.join(RESERVED_NAMES)}: got {', '.join(names)}. "
            "Rename with --modality NAME=KIND@COLUMN, e.g. --modality caption=text@text."
        )
    absent = [o.column for o in chosen if o.column not in header]
    if absent:
        raise CmiError(f"{path} has no column {', '.join(map(repr, absent))} (columns: {', '.join(header)}).")
    if sum(o.kind == "text" for o in chosen) > 1:
        raise CmiError("at most one text modality is supported (it is stored in the shards' text column).")
