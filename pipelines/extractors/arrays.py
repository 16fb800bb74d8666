"""Numeric arrays (the manifest's ``array`` kind): one file per sample, read with numpy's own loaders.

Files: ``.npy`` and ``.npz`` (``numpy.load`` with ``allow_pickle=False``: object arrays and pickles
are refused, never unpickled; an ``.npz`` gives the array named by the modality's key, or its only
array), and numeric sequence files ``.csv`` / ``.tsv`` (``numpy.loadtxt``: one time step a row, one
channel a column, ``#`` comments; a first row that is not numeric is a header and skipped).
Integers and booleans are converted; every payload is float32.

What the array is follows from its shape (the *layout*):

- ``vector``: a 1-D array ``(D,)`` (a 0-D scalar counts as ``(1,)``); stored as it is, ``(D,)``.
- ``sequence``: 2-D or more, and every CSV/TSV file: the first axis is time, the other axes are
  flattened into channels, ``(T, C)``. Stored as ``(L, C + 1)``: ``L`` steps of ``C`` channels plus
  a last *presence mask* channel, 1.0 on a real time step and 0.0 on padding. Without a ``length``
  every file must have the reference's ``T`` steps (``L = T``, mask all ones); with ``length`` a
  longer sequence keeps its first ``length`` steps and a shorter one is padded with zero steps
  (mask 0) at its end. :func:`sequence_lengths` reads the real step counts back.

The reference shape is that of the first readable file of a modality (train samples first, in
listing order, :func:`reference_params`). A file with another shape (another ``D``, another channel
count, or another ``T`` without ``length``), an unreadable, empty or non-numeric file, or an
``.npz`` without the key, raises :class:`MediaError`: prepare stores the modality absent and
records the reason, like any bad media.
"""

from __future__ import annotations

import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.media import check_file

#: numpy's own formats (one array, or named arrays in a zip)
NUMPY_SUFFIXES = (".npy", ".npz")
#: numeric tables, one time step a row: suffix -> column delimiter
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
ARRAY_SUFFIXES = NUMPY_SUFFIXES + tuple(TABLE_DELIMITERS)
LAYOUTS = ("vector", "sequence")
#: dtype kinds converted to float32: bool, signed and unsigned integers, floats
NUMERIC_KINDS = "biuf"


def load_array(path, key: str | None = None) -> np.ndarray:
    """The numeric array in ``path`` as float32, in its stored shape (CSV/TSV: ``(rows, columns)``).

    ``key`` names the array of an ``.npz`` file (without it the file must hold exactly one); the
    other formats hold one array and ignore it. Raises MediaError for a missing, empty, truncated
    or unreadable file, pickled or object data, a missing key, non-numeric values or an array
    without elements."""
    path = Path(path)
    check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TABLE_DELIMITERS:
            array = _load_table(path, TABLE_DELIMITERS[suffix])
        elif suffix in NUMPY_SUFFIXES:
            array = _load_numpy(path, key)
        else:
            raise MediaError(f"not an array file ({', '.join(ARRAY_SUFFIXES)}): {path}")
    except MediaError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise MediaError(f"unreadable array file {path}: {exc}") from exc
    if array.dtype.kind not in NUMERIC_KINDS:
        raise MediaError(f"{path} holds {array.dtype} values, not real numbers")
    if array.size == 0:
        raise MediaError(f"empty array (shape {array.shape}) in {path}")
    return array.astype(np.float32, copy=False)


def _load_numpy(path: Path, key: str | None) -> np.ndarray:
    # the format is read from the file's magic bytes, not its suffix: an npz named .npy is an npz
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    with loaded:
        names = list(loaded.files)
        if key is None:
            if len(names) != 1:
                held = ", ".join(names) if names else "no array"
                raise MediaError(f"{path} holds {held}: name the array with --modality NAME=array:KEY")
            key = names[0]
        elif key not in names:
            raise MediaError(f"{path} has no array {key!r} (it holds {', '.join(names) or 'no array'})")
        return loaded[key]


def _load_table(path: Path, delimiter: str) -> np.ndarray:
    """(rows, columns) float32 from a delimited numeric file; a non-numeric first row is a header."""
    options = dict(delimiter=delimiter, ndmin=2, dtype=np.float32, encoding="utf-8-sig")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": load_array refuses the empty array
        try:
            np.loadtxt(path, max_rows=1, **options)
            header = 0
        except ValueError:
            header = 1
        return np.loadtxt(path, skiprows=header, **options)


@dataclass(frozen=True)
class ArrayParams:
    """How one array modality is stored (the modality spec's ``params``).

    ``shape``: ``(D,)`` for a vector; ``(L, C)`` for a sequence, ``L`` = ``length`` when given,
    else the reference's step count. ``length`` None: every file has exactly the reference shape;
    otherwise sequences are cropped or zero-padded to ``length`` steps. ``key``: the ``.npz``
    array read. ``reference``: the file whose shape was taken."""

    layout: str
    shape: tuple[int, ...]
    length: int | None = None
    key: str | None = None
    reference: str = ""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"array layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.shape) != (1 if self.layout == "vector" else 2):
            raise ValueError(f"a {self.layout} has {'one' if self.layout == 'vector' else 'two'} dimensions, "
                             f"got shape {self.shape}")
        if self.length is not None and (self.layout != "sequence" or self.length != self.shape[0]):
            raise ValueError(f"length {self.length} applies to sequences of that many steps, got {self.layout} "
                             f"{self.shape}")

    @classmethod
    def from_dict(cls, d: dict) -> "ArrayParams":
        return cls(d["layout"], tuple(d["shape"]), d.get("length"), d.get("key"), d.get("reference", ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    def output_shape(self) -> tuple[int, ...]:
        """The stored payload's shape: ``(D,)``, or ``(L, C + 1)`` with the presence mask last."""
        return self.shape if self.layout == "vector" else (self.shape[0], self.shape[1] + 1)

    @classmethod
    def of(cls, array: np.ndarray, *, length: int | None = None, key: str | None = None,
           reference: str = "") -> "ArrayParams":
        """The params that ``array`` (the reference file's) sets: a vector when 1-D (``length``
        unused), else a sequence of its channels, ``length`` steps (or its own step count)."""
        if array.ndim <= 1:
            return cls("vector", (array.size,), None, key, reference)
        steps, channels = as_sequence(array).shape
        return cls("sequence", (length or steps, channels), length, key, reference)


def as_sequence(array: np.ndarray) -> np.ndarray:
    """``(T, C)``: the first axis is time, the others are flattened into channels."""
    return array.reshape(array.shape[0], -1)


def fit_array(array: np.ndarray, params: ArrayParams, path="") -> np.ndarray:
    """One stored payload (``params.output_shape()``, float32) from a loaded array; MediaError
    naming the expected and the found shape when ``array`` does not fit ``params``."""
    where = Path(params.reference).name or "the reference file"
    if params.layout == "vector":
        if array.ndim > 1 or array.size != params.shape[0]:
            raise MediaError(
                f"wrong shape: {path} holds an array of shape {array.shape}, expected {params.shape} (as in {where}); "
                "1-D arrays are fixed-size vectors: store a variable-length series as (T, 1) or a one-column CSV "
                "and pass --array-length"
            )
        return array.reshape(params.shape).astype(np.float32, copy=False)
    steps, channels = params.shape
    if array.ndim < 2:
        raise MediaError(f"wrong shape: {path} holds an array of shape {array.shape}, expected a sequence "
                         f"(T, {channels}) (as in {where})")
    sequence = as_sequence(array)
    if sequence.shape[1] != channels:
        raise MediaError(f"wrong shape: {path} holds an array of shape {array.shape}, {sequence.shape[1]} "
                         f"channels a step; expected (T, {channels}) (as in {where})")
    if params.length is None and sequence.shape[0] != steps:
        raise MediaError(
            f"wrong shape: {path} holds {sequence.shape[0]} time steps, expected {steps} (as in {where}); "
            "--array-length N pads or crops sequences to N steps"
        )
    out = np.zeros(params.output_shape(), np.float32)
    kept = min(steps, sequence.shape[0])
    out[:kept, :channels] = sequence[:kept]
    out[:kept, channels] = 1.0
    return out


def sequence_lengths(payload: np.ndarray) -> np.ndarray:
    """The real (unpadded) step counts of stored sequences ``(..., L, C + 1)``: the sum of the mask channel."""
    return (np.asarray(payload)[..., -1] > 0.5).sum(axis=-1)


def reference_params(paths: Iterable[str], name: str, *, length: int | None = None,
                     key: str | None = None) -> ArrayParams:
    """The params set by the first readable file of ``paths`` (give the train files first); a
    CmiError when none is readable (then every file of the modality would be a reject)."""
    first_error = None
    for path in paths:
        try:
            array = load_array(path, key)
        except MediaError as exc:
            first_error = first_error or str(exc)
            continue
        return ArrayParams.of(array, length=length, key=key, reference=str(path))
    if first_error is None:
        raise CmiError(f"array modality {name!r} has no file in any sample; fill its column or leave it out.")
    raise CmiError(f"array modality {name!r}: no file is readable, so its shape is unknown; the first problem: "
                   f"{first_error}.")
