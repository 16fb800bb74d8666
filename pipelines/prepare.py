"""`cmi prepare`: a dataset listing -> validated feature shards, resumably and in parallel.

How a run goes (all inside ``<workspace>/datasets/<name>/``):

1. The listing (pipelines.datasets) is cut into shards of ``shard_size`` consecutive samples.
   A *plan fingerprint* covers every sample record, the loader's rejects, the classes and the
   modality specs (extractor parameters included); it is saved in ``plan.json``.
2. Each shard is extracted (in ``workers`` processes) and written atomically: first its rejects
   to ``rejects/part-NNNNN.parquet``, then ``shards/part-NNNNN.parquet``. An existing shard file
   therefore means a finished shard, which a re-run after Ctrl-C or ``kill -9`` skips.
3. ``rejects.parquet`` gathers every reject; then, unless more than ``max_reject_fraction`` of
   the samples were affected, ``manifest.json`` is written last and the dataset becomes the
   workspace's latest.

Rejects: a modality whose media is missing, empty, truncated or unreadable (or whose features are
not finite, or, for an array, whose shape differs from the modality's) is marked absent (zeros,
``<m>_present`` false) and gets a reject row; the sample is kept while any modality is left and
dropped otherwise. Loader rejects (duplicate ids, empty event windows, ...) are dropped samples
too. The reject fraction counts every sample with a reject row.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.artifacts import (
    MANIFEST_NAME, Artifact, Workspace, atomic_write_json, atomic_write_parquet, fingerprint, load_artifact,
    write_manifest,
)
from pipelines.datasets import DATASETS, ave, cremad, crisismmd, manifest, synthetic
from pipelines.datasets.base import Listing, ModalitySource, Reject, Sample, layout_error
from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.arrays import ArrayParams, fit_array, load_array, reference_params
from pipelines.extractors.audio import AudioParams, audio_features, fit_duration, load_audio
# the encoders import torch and transformers only when instantiated
from pipelines.extractors.image import ImageEncoder, load_image
from pipelines.extractors.text import TextEncoder, clean_text
from pipelines.extractors.visual import VisualParams, extract_frames
from pipelines.shards import REJECTS_FILE, SHARD_DIR, SPLITS, ModalitySpec, build_table, shard_schema, write_shard

PLAN_FILE = "plan.json"
REJECT_PARTS_DIR = "rejects"
#: bump when the shard contents for the same plan would change
PLAN_FORMAT = 1
#: small enough that a few hundred clips still make several shards (work units) for the workers
DEFAULT_SHARD_SIZE = 128
DEFAULT_MAX_REJECT_FRACTION = 0.05
#: spectrograms are computed this many clips at a time (bounds a worker's memory for long audio)
AUDIO_BATCH = 64
SYNTHETIC_RAW_DIR = Path("raw") / "synthetic-cremad"
REJECTS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("modality", pa.string()),
    pa.field("path", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("sample_dropped", pa.bool_(), nullable=False),
])


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class FeatureOptions:
    """How media becomes features (the CLI's feature options). ``audio_duration`` None means the
    dataset's default (3 s for CREMA-D and manifests, 10 s for AVE)."""

    audio_features: str = "stft"
    sample_rate: int = 16000
    audio_duration: float | None = None
    n_fft: int = 512
    hop_length: int = 353
    n_mels: int = 128
    frames: int = 3
    image_size: int = 112
    face_crop: bool = False
    image_model: str | None = None
    text_model: str | None = None
    text_max_length: int = 40
    #: array sequences are cropped / zero-padded to this many time steps (a presence mask marks
    #: the real ones); None: every file of a modality has the first readable file's shape
    array_length: int | None = None


@dataclass(frozen=True)
class RunOptions:
    """How the prepare run behaves; none of these change the prepared samples (``shard_size``
    only how they are cut into files)."""

    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1
    force: bool = False
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise CmiError(f"--shard-size must be at least 1, got {self.shard_size}.")
        if self.workers < 1:
            raise CmiError(f"--workers must be at least 1, got {self.workers}.")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise CmiError(f"--max-reject-fraction must be in [0, 1], got {self.max_reject_fraction}.")


class ProgressHook:
    """Receives progress; the CLI shows it as a rich progress bar. The default does nothing."""

    def start(self, description: str, total: int, completed: int = 0, kept: int | None = None,
              dropped: int | None = None) -> None:
        """A phase begins: ``total`` units, of which ``completed`` are already done (resume);
        ``kept``/``dropped`` are given (so far) when the units are samples being prepared."""

    def advance(self, units: int, kept: int = 0, dropped: int = 0) -> None:
        """``units`` more done, of which ``kept`` samples kept and ``dropped`` dropped."""

    def stop(self) -> None:
        """The phase is over."""


# ----------------------------------------------------------------------------- listings


#: dataset -> the loader options it accepts (the CLI's dataset-specific options)
DATASET_OPTIONS: dict[str, tuple[str, ...]] = {
    "cremad": ("split", "val_by", "val_fraction", "test_fraction", "seed"),
    "synthetic": ("split", "val_fraction", "test_fraction", "seed", "clips", "imbalance", "shift", "actors", "val_by"),
    "ave": ("val_by",),
    "crisismmd": ("task", "agreed", "label_column", "val_by", "val_fraction", "seed"),
    "manifest": ("modality", "val_by", "val_fraction", "seed"),
}


def build_listing(
    workspace: Workspace,
    dataset: str,
    root: str | os.PathLike | None,
    options: dict[str, Any],
    *,
    workers: int = 1,
    progress: ProgressHook | None = None,
) -> Listing:
    """The listing of ``dataset`` under ``root`` with the given loader ``options`` (None values
    mean "default"); options that do not apply to the dataset are refused. For ``synthetic`` the
    media are generated first (into ``root``, default ``<workspace>/raw/synthetic-cremad``)."""
    if dataset not in DATASETS:
        raise CmiError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}.")
    given = {k: v for k, v in options.items() if v is not None and v != () and v is not False}
    foreign = sorted(set(given) - set(DATASET_OPTIONS[dataset]))
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise CmiError(f"{flags} do(es) not apply to {dataset}; drop them (see `cmi prepare --help`).")
    if dataset == "cremad":
        return cremad.load(root, **given)
    if dataset == "ave":
        return ave.load(root, **given)
    if dataset == "crisismmd":
        return crisismmd.load(root, **given)
    if dataset == "manifest":
        return manifest.load(root, modalities=given.pop("modality", ()), **given)
    params = synthetic.SyntheticParams(
        **{k: given.pop(k) for k in ("clips", "imbalance", "shift", "actors") if k in given}, seed=given.get("seed", 0)
    )
    if given.get("split") == "actor" and params.actor_count is not None:
        for key, value in synthetic.ACTOR_SPLIT_FRACTIONS.items():
            given.setdefault(key, value)
    raw = Path(root) if root else workspace.root / SYNTHETIC_RAW_DIR
    clips = generate_synthetic(raw, params, workers=workers, progress=progress)
    listing = cremad.load(raw, clips=[c.name for c in clips], dataset="synthetic", **given)
    listing.info["synthetic"] = asdict(params)
    return listing


def generate_synthetic(root: Path, params: synthetic.SyntheticParams, *, workers: int = 1,
                       progress: ProgressHook | None = None) -> list[synthetic.ClipPlan]:
    """Write the synthetic clips into ``root`` (resumes: clips already there are kept); returns
    every planned clip."""
    clips = synthetic.plan_clips(params)
    todo = synthetic.claim_root(root, params, clips)
    if not todo:
        return clips
    progress = progress or ProgressHook()
    progress.start("generating synthetic clips", len(clips), completed=len(clips) - len(todo))
    chunks = [todo[i : i + 16] for i in range(0, len(todo), 16)]
    try:
        for done in run_tasks(_write_clips, [(root, params, chunk) for chunk in chunks], workers):
            progress.advance(done)
    finally:
        progress.stop()
    return clips


def _write_clips(task: tuple[Path, synthetic.SyntheticParams, list[synthetic.ClipPlan]]) -> int:
    root, params, clips = task
    for clip in clips:
        synthetic.write_clip(root, params, clip)
    return len(clips)


# ----------------------------------------------------------------------------- modality specs


def resolve_specs(listing: Listing, features: FeatureOptions) -> list[ModalitySpec]:
    """One ModalitySpec per listed modality: payload kind, shape, dtype and extractor parameters."""
    sources = {m.source for m in listing.modalities}
    if features.face_crop and "frames" not in sources:
        raise CmiError(f"--face-crop applies to video frames; {listing.dataset} has none here. Drop it.")
    if features.image_model and "image" not in sources:
        raise CmiError(f"--image-model applies to image modalities; {listing.dataset} has none here. Drop it.")
    if features.text_model and "text" not in sources:
        raise CmiError(f"--text-model applies to text modalities; {listing.dataset} has none here. Drop it.")
    if features.array_length is not None and "array" not in sources:
        raise CmiError(f"--array-length applies to array modalities; {listing.dataset} has none here. Drop it.")
    if features.array_length is not None and features.array_length < 1:
        raise CmiError(f"--array-length must be at least 1, got {features.array_length}.")
    specs = []
    for modality in listing.modalities:
        if modality.source == "array":
            params = _array_params(listing, modality.name, features.array_length)
            specs.append(ModalitySpec(modality.name, params.layout, params.output_shape(), "float32", params.to_dict()))
        elif modality.source == "audio":
            duration = features.audio_duration or listing.defaults.get("audio_duration", 3.0)
            params = AudioParams(features.audio_features, features.sample_rate, duration, features.n_fft,
                                 features.hop_length, features.n_mels)
            specs.append(ModalitySpec(modality.name, "spectrogram", params.output_shape(), "float32", params.to_dict()))
        elif modality.source == "frames":
            params = VisualParams(features.frames, features.image_size, features.face_crop)
            specs.append(ModalitySpec(modality.name, "frames", params.output_shape(), "uint8", params.to_dict()))
        elif modality.source == "image" and not features.image_model:
            size = features.image_size
            specs.append(ModalitySpec(modality.name, "image", (size, size, 3), "uint8", {"image_size": size}))
        elif modality.source == "image":
            model = model_params(features.image_model)
            dim = _encoder(ImageEncoder, model["model"]).dim
            specs.append(ModalitySpec(modality.name, "embedding", (dim,), "float32",
                                      {"image_size": features.image_size, **model}))
        else:
            if not features.text_model:
                raise CmiError(
                    f"modality {modality.name!r} is text: embedding it needs --text-model PATH, a local directory "
                    "holding a transformers text encoder and its tokenizer (e.g. on a machine with internet: "
                    "AutoModel.from_pretrained('bert-base-uncased').save_pretrained(DIR) and "
                    "AutoTokenizer.from_pretrained('bert-base-uncased').save_pretrained(DIR); cmi never downloads "
                    f"models). Or leave the text out: --modalities {','.join(m.name for m in listing.modalities if m.source != 'text')}."
                )
            model = model_params(features.text_model)
            dim = _encoder(TextEncoder, model["model"], features.text_max_length).dim
            specs.append(ModalitySpec(modality.name, "embedding", (dim,), "float32",
                                      {"max_length": features.text_max_length, **model}))
    arrays = [s for s, m in zip(specs, listing.modalities) if m.source == "array"]
    if features.array_length is not None and all(s.kind == "vector" for s in arrays):
        raise CmiError(
            f"--array-length pads or crops sequences, and {', '.join(s.name for s in arrays)} hold(s) 1-D vectors "
            f"(the shape of {arrays[0].params['reference']}). Drop it, or store each series as a (T, C) array or a "
            "CSV/TSV file (one time step a row)."
        )
    return specs


def _array_params(listing: Listing, name: str, length: int | None) -> ArrayParams:
    """The params of array modality ``name``: its shape is the first readable file's, train
    samples first (in listing order)."""
    ordered = sorted((s for s in listing.samples if name in s.media), key=lambda s: s.split != "train")
    key = listing.defaults.get("array_keys", {}).get(name)
    return reference_params((s.media[name] for s in ordered), name, length=length, key=key)


def model_params(model_dir: str) -> dict[str, Any]:
    """A local model directory's absolute path and a digest of its files (names, sizes and the
    contents of files under 1 MB), so that replacing the model changes the plan."""
    path = Path(model_dir).expanduser().resolve()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}\n".encode())
        if size < 1 << 20:
            digest.update(file.read_bytes())
    return {"model": str(path), "model_digest": digest.hexdigest()[:16]}


_ENCODERS: dict[tuple, Any] = {}
_IN_WORKER = False


def _encoder(cls: type, model_dir: str, *args: Any) -> Any:
    """One encoder per (class, model, args) per process, loaded on first use (single-threaded
    in a worker process: the workers are the parallelism)."""
    key = (cls.__name__, str(model_dir), *args)
    if key not in _ENCODERS:
        if _IN_WORKER:
            import torch

            torch.set_num_threads(1)
        _ENCODERS[key] = cls(model_dir, *args)
    return _ENCODERS[key]


# ----------------------------------------------------------------------------- shard extraction


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to write one shard (picklable)."""

    index: int
    samples: tuple[Sample, ...]
    sources: tuple[ModalitySource, ...]
    specs: tuple[ModalitySpec, ...]
    with_text: bool
    directory: str

    @property
    def shard_rel(self) -> str:
        return f"{SHARD_DIR}/part-{self.index:05d}.parquet"

    @property
    def rejects_rel(self) -> str:
        return f"{REJECT_PARTS_DIR}/part-{self.index:05d}.parquet"


@dataclass(frozen=True)
class ShardOutcome:
    index: int
    samples: int
    kept: int

    @property
    def dropped(self) -> int:
        return self.samples - self.kept


@dataclass
class _Extracted:
    payload: np.ndarray
    present: np.ndarray
    failures: dict[int, tuple[str | None, str]] = field(default_factory=dict)


def extract_shard(task: ShardTask) -> ShardOutcome:
    """Extract, then write the shard's rejects and the shard itself (both atomically)."""
    samples = task.samples
    texts = None
    if task.with_text:
        texts = [clean_text(s.text) if s.text is not None else None for s in samples]
    extracted = {src.name: _EXTRACTORS[src.source](samples, src.name, spec, texts) for src, spec in zip(task.sources, task.specs)}
    for spec in task.specs:
        result = extracted[spec.name]
        if result.payload.dtype.kind == "f":
            bad = ~np.isfinite(result.payload.reshape(len(samples), -1)).all(axis=1) & result.present
            for i in np.flatnonzero(bad):
                result.failures[int(i)] = (samples[i].media.get(spec.name), "features are not finite")
            result.present &= ~bad
            result.payload[bad] = 0
    kept = np.zeros(len(samples), dtype=bool)
    for result in extracted.values():
        kept |= result.present
    rejects = []
    for i, sample in enumerate(samples):
        rows = [Reject(sample.id, sample.split, name, *result.failures[i], sample_dropped=not kept[i])
                for name, result in extracted.items() if i in result.failures]
        if not rows and not kept[i]:
            rows = [Reject(sample.id, sample.split, None, None, "no modality in the raw data")]
        rejects += rows
    directory = Path(task.directory)
    write_rejects(rejects, directory / task.rejects_rel)
    keep = np.flatnonzero(kept)
    if keep.size == 0:  # every sample rejected: an empty shard still marks the shard as done
        write_shard(shard_schema(task.specs, with_text=task.with_text).empty_table(), directory / task.shard_rel)
        return ShardOutcome(task.index, len(samples), 0)
    table = build_table(
        task.specs,
        [samples[i].id for i in keep],
        [samples[i].label for i in keep],
        [samples[i].split for i in keep],
        [samples[i].group for i in keep],
        {name: result.payload[keep] for name, result in extracted.items()},
        {name: result.present[keep] for name, result in extracted.items()},
        texts=[texts[i] for i in keep] if texts is not None else None,
    )
    write_shard(table, directory / task.shard_rel)
    return ShardOutcome(task.index, len(samples), int(keep.size))


def _read_each(samples: Sequence[Sample], name: str, read: Callable[[Sample, str], np.ndarray],
               shape: tuple[int, ...], dtype: str) -> _Extracted:
    """Call ``read(sample, path)`` for every sample that has media for ``name``; MediaError (or
    any other error: bad input must not stop the run) becomes that sample's failure reason."""
    out = _Extracted(np.zeros((len(samples), *shape), dtype=dtype), np.zeros(len(samples), dtype=bool))
    for i, sample in enumerate(samples):
        path = sample.media.get(name)
        if path is None:
            continue
        try:
            out.payload[i] = read(sample, path)
            out.present[i] = True
        except MediaError as exc:
            out.failures[i] = (path, str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder's unforeseen failure on one file
            out.failures[i] = (path, f"unexpected {type(exc).__name__}: {exc}")
    return out


def _window(sample: Sample) -> tuple[float | None, float | None]:
    return sample.window if sample.window is not None else (None, None)


def _extract_audio(samples: Sequence[Sample], name: str, spec: ModalitySpec, texts: Any) -> _Extracted:
    params = AudioParams(**spec.params)

    def read(sample: Sample, path: str) -> np.ndarray:
        return fit_duration(load_audio(path, params.sample_rate, *_window(sample)), params.sample_rate, params.duration)

    waves = _read_each(samples, name, read, (params.num_samples,), "float32")
    out = _Extracted(np.zeros((len(samples), *spec.shape), np.float32), waves.present, waves.failures)
    rows = np.flatnonzero(waves.present)
    for first in range(0, rows.size, AUDIO_BATCH):
        batch = rows[first : first + AUDIO_BATCH]
        out.payload[batch] = audio_features(waves.payload[batch], params)
    return out


def _extract_frames(samples: Sequence[Sample], name: str, spec: ModalitySpec, texts: Any) -> _Extracted:
    params = VisualParams(**spec.params)
    return _read_each(samples, name, lambda s, p: extract_frames(p, params, *_window(s)), spec.shape, spec.dtype)


def _extract_image(samples: Sequence[Sample], name: str, spec: ModalitySpec, texts: Any) -> _Extracted:
    size = spec.params["image_size"]
    pixels = _read_each(samples, name, lambda s, p: load_image(p, size), (size, size, 3), "uint8")
    if spec.kind == "image":
        return pixels
    out = _Extracted(np.zeros((len(samples), *spec.shape), np.float32), pixels.present, pixels.failures)
    rows = np.flatnonzero(pixels.present)
    if rows.size:
        out.payload[rows] = _encoder(ImageEncoder, spec.params["model"]).embed(pixels.payload[rows])
    return out


def _extract_text(samples: Sequence[Sample], name: str, spec: ModalitySpec, texts: list[str | None]) -> _Extracted:
    out = _Extracted(np.zeros((len(samples), *spec.shape), np.float32), np.zeros(len(samples), dtype=bool))
    for i, text in enumerate(texts):
        if text is not None and not text:
            out.failures[i] = (None, "empty text after cleaning (URLs removed)")
    out.present[:] = [bool(t) for t in texts]
    rows = np.flatnonzero(out.present)
    if rows.size:
        encoder = _encoder(TextEncoder, spec.params["model"], spec.params["max_length"])
        out.payload[rows] = encoder.embed([texts[i] for i in rows])
    return out


def _extract_array(samples: Sequence[Sample], name: str, spec: ModalitySpec, texts: Any) -> _Extracted:
    params = ArrayParams.from_dict(spec.params)
    return _read_each(samples, name, lambda s, p: fit_array(load_array(p, params.key), params, p), spec.shape,
                      spec.dtype)


_EXTRACTORS = {"audio": _extract_audio, "frames": _extract_frames, "image": _extract_image, "text": _extract_text,
               "array": _extract_array}


def write_rejects(rejects: Sequence[Reject], path: Path) -> None:
    """Write reject rows atomically (zstd Parquet, like a shard)."""
    atomic_write_parquet(path, pa.Table.from_pylist([asdict(r) for r in rejects], schema=REJECTS_SCHEMA))


# ----------------------------------------------------------------------------- process pool


def run_tasks(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int) -> Iterable[Any]:
    """Yield ``fn(task)`` for each task, in completion order.

    ``workers`` 1 runs in this process. Otherwise a spawn-context process pool runs them with at
    most ``2 * workers`` tasks submitted at a time (bounded memory). Workers ignore Ctrl-C; on
    Ctrl-C or an error here the workers are terminated at once (every file they write is
    atomic, so finished work is kept and unfinished work leaves nothing behind).
    """
    if workers == 1:
        for task in tasks:
            yield fn(task)
        return
    pending: set[cf.Future] = set()
    iterator = iter(tasks)
    executor = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(os.getpid(),),
    )
    try:
        for task in iterator:
            pending.add(executor.submit(fn, task))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield future.result()
                for task in iterator:
                    pending.add(executor.submit(fn, task))
                    break
    except BaseException:
        _terminate(executor)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _terminate(executor: cf.ProcessPoolExecutor) -> None:
    """Stop the pool's worker processes now (``terminate_workers`` from Python 3.14; before,
    through the executor's process table)."""
    terminate = getattr(executor, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def _init_worker(parent_pid: int) -> None:
    """Worker set-up: leave Ctrl-C to the parent (it stops the pool), load encoders single-threaded
    (the workers are the parallelism), and exit if the parent dies (kill -9) instead of idling."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# ----------------------------------------------------------------------------- the stage


@dataclass
class Summary:
    """What a prepare produced, per split."""

    listed: dict[str, int]
    kept: dict[str, int]
    present: dict[str, dict[str, int]]
    dropped: int
    affected: int
    reasons: list[tuple[str, str, int]]
    #: split -> sorted distinct groups of its kept samples; None when no kept sample has a group
    groups: dict[str, list[str]] | None = None
    #: what a group is ("actor", "event", "group"), for messages
    group_name: str = "group"

    @property
    def total(self) -> int:
        return sum(self.listed.values())

    @property
    def shared_groups(self) -> dict[str, int]:
        """``"a/b"`` -> how many groups splits a and b share, for each pair of splits (empty without groups)."""
        if self.groups is None:
            return {}
        return {f"{a}/{b}": len(set(self.groups[a]) & set(self.groups[b]))
                for a, b in itertools.combinations(SPLITS, 2)}

    def group_record(self) -> dict[str, Any]:
        """The dataset manifest's group entries (empty without groups): ``group_name``, ``groups``
        (split -> sorted list), ``group_counts`` (split -> number of groups) and ``shared_groups``."""
        if self.groups is None:
            return {}
        return {
            "group_name": self.group_name,
            "groups": self.groups,
            "group_counts": {split: len(names) for split, names in self.groups.items()},
            "shared_groups": self.shared_groups,
        }

    @property
    def reject_fraction(self) -> float:
        return self.affected / self.total if self.total else 0.0


@dataclass
class PrepareResult:
    """The prepared dataset, its summary, and whether it was already complete or resumed."""

    artifact: Artifact
    summary: Summary
    reused: bool = False  # the dataset was already complete: nothing was done
    shards_skipped: int = 0  # finished shards found from an interrupted run


class TooManyRejects(CmiError):
    """More samples were affected by rejects than allowed; ``summary`` says which and why."""

    def __init__(self, message: str, summary: Summary):
        super().__init__(message)
        self.summary = summary


def prepare_listing(
    workspace: Workspace,
    listing: Listing,
    features: FeatureOptions = FeatureOptions(),
    run: RunOptions = RunOptions(),
    *,
    name: str | None = None,
    progress: ProgressHook | None = None,
) -> PrepareResult:
    """Prepare ``listing`` into the dataset artifact ``name`` (default: the dataset's name).

    Resumes an interrupted run with the same plan; returns the existing artifact unchanged when
    it is complete with the same plan (``reused``); refuses a different plan unless
    ``run.force``. Raises :class:`TooManyRejects` (after writing ``rejects.parquet``, without a
    manifest) when the reject fraction exceeds ``run.max_reject_fraction``.
    """
    progress = progress or ProgressHook()
    name = name or listing.dataset
    try:
        directory = workspace.artifact_dir("dataset", name)
    except ValueError:
        raise CmiError(f"--name {name!r} is not a valid dataset name: use a plain name without '/'.") from None
    for modality, folder in listing.media_dirs.items():
        if not folder.is_dir():
            others = [m.name for m in listing.modalities if m.name != modality]
            hint = f"; to prepare without it pass --modalities {','.join(others)}" if others else ""
            raise layout_error(listing.dataset, listing.root, f"{folder.name}/ (modality {modality}) is missing{hint}",
                               listing.layout)
    if not listing.samples:
        raise CmiError(f"{listing.dataset} at {listing.root} lists no usable sample; check --root and the split files.")
    specs = resolve_specs(listing, features)
    with_text = listing.has_text
    plan = {
        "format": PLAN_FORMAT,
        "dataset": listing.dataset,
        "classes": listing.classes,
        "modalities": [s.to_dict() for s in specs],
        "with_text": with_text,
        "shard_size": run.shard_size,
        "samples": fingerprint([s.to_dict() for s in listing.samples]),
        "loader_rejects": fingerprint([asdict(r) for r in listing.rejects]),
    }
    plan_fp = fingerprint(plan)
    if run.force and directory.exists():
        shutil.rmtree(directory)
    state = _claim(directory, plan, plan_fp, name)
    if state == "complete":
        artifact = load_artifact(directory, "dataset")
        workspace.set_latest("dataset", name)
        return PrepareResult(artifact, _summarize(directory, listing, artifact.manifest["shards"], specs), reused=True)

    tasks = [
        ShardTask(k, tuple(listing.samples[start : start + run.shard_size]), tuple(listing.modalities), tuple(specs),
                  with_text, str(directory))
        for k, start in enumerate(range(0, len(listing.samples), run.shard_size))
    ]
    kept_rows = {t.index: _finished_rows(directory, t) for t in tasks}  # shard -> kept samples, None: to do
    finished = [t for t in tasks if kept_rows[t.index] is not None]
    todo = [t for t in tasks if kept_rows[t.index] is None]
    done_kept = sum(kept_rows[t.index] for t in finished)
    done_samples = sum(len(t.samples) for t in finished)
    if todo:
        progress.start(f"preparing {name}", len(listing.samples), completed=done_samples, kept=done_kept,
                       dropped=done_samples - done_kept)
        try:
            for outcome in run_tasks(extract_shard, todo, run.workers):
                kept_rows[outcome.index] = outcome.kept
                progress.advance(outcome.samples, kept=outcome.kept, dropped=outcome.dropped)
        finally:
            progress.stop()

    # shards whose every sample was rejected are left out of the dataset (their files only mark them done)
    shard_files = [t.shard_rel for t in tasks if kept_rows[t.index] > 0]
    rejects = list(listing.rejects)
    for task in tasks:
        rejects += [Reject(**row) for row in pq.read_table(directory / task.rejects_rel).to_pylist()]
    write_rejects(rejects, directory / REJECTS_FILE)
    summary = _summarize(directory, listing, shard_files, specs)
    if summary.reject_fraction > run.max_reject_fraction:
        raise TooManyRejects(
            f"{summary.affected} of {summary.total} samples ({summary.reject_fraction:.1%}) have rejects, more than "
            f"--max-reject-fraction {run.max_reject_fraction:g}. The reasons are in {directory / REJECTS_FILE}. "
            "Fix the input and re-run with --force, or accept them by re-running with a higher "
            "--max-reject-fraction (finished shards are reused).",
            summary,
        )
    counts = {split: summary.kept.get(split, 0) for split in SPLITS}
    write_manifest(
        directory, "dataset",
        params={"dataset": listing.dataset, "root": str(listing.root), **listing.info,
                "features": asdict(features), "shard_size": run.shard_size},
        inputs={"listing": plan_fp},
        files=shard_files + [REJECTS_FILE],
        extra={
            "dataset": listing.dataset,
            "classes": listing.classes,
            "modalities": [s.to_dict() for s in specs],
            "shards": shard_files,
            "counts": counts,
            "rejects": summary.dropped,
            "samples_with_rejects": summary.affected,
            "present": summary.present,
            "root": str(listing.root),
            "split_method": listing.info.get("split"),
            "text_column": with_text,
            **summary.group_record(),
        },
    )
    shutil.rmtree(directory / REJECT_PARTS_DIR, ignore_errors=True)
    workspace.set_latest("dataset", name)
    return PrepareResult(load_artifact(directory, "dataset"), summary, shards_skipped=len(finished))


def _claim(directory: Path, plan: dict[str, Any], plan_fp: str, name: str) -> str:
    """Check the output folder against this plan (``plan_fp`` its fingerprint): "complete" (same
    plan, finished), "resume" (same plan, unfinished, or new). A different plan is refused with the fix."""
    plan_path = directory / PLAN_FILE
    if (directory / MANIFEST_NAME).is_file():
        previous = load_artifact(directory, "dataset").manifest.get("inputs", {}).get("listing")
        if previous == plan_fp:
            return "complete"
        raise CmiError(
            f"dataset {name!r} already exists in {directory} with other inputs or parameters. "
            "Re-run with --force to replace it, or with --name NEW to keep both."
        )
    if plan_path.is_file():
        if json.loads(plan_path.read_text(encoding="utf-8")).get("fingerprint") != plan_fp:
            raise CmiError(
                f"{directory} holds an unfinished prepare with other inputs or parameters. Re-run that "
                "command to finish it, or re-run this one with --force to start over (or --name NEW)."
            )
    elif directory.exists() and any(directory.iterdir()):
        raise CmiError(f"{directory} is not empty and is not a cmi dataset; use --force to replace it or --name NEW.")
    for stray in directory.glob("*/.tmp-*"):
        stray.unlink()
    atomic_write_json(plan_path, {"fingerprint": plan_fp, "plan": plan})
    return "resume"


def _finished_rows(directory: Path, task: ShardTask) -> int | None:
    """The row count of a finished shard, None if unfinished. A shard is finished when its
    rejects part and its (atomically written) file exist and the file reads as Parquet."""
    path = directory / task.shard_rel
    if not path.is_file() or not (directory / task.rejects_rel).is_file():
        return None
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return None


def _summarize(directory: Path, listing: Listing, shard_files: list[str], specs: list[ModalitySpec]) -> Summary:
    """Per-split counts (and groups) read back from the shards and rejects.parquet."""
    names = [s.name for s in specs]
    listed: Counter = Counter(s.split for s in listing.samples)
    listed.update(r.split for r in listing.rejects)
    kept: Counter = Counter()
    present = {m: Counter() for m in names}
    groups: dict[str, set[str]] = {s: set() for s in SPLITS}
    for rel in shard_files:
        table = pq.read_table(directory / rel, columns=["split", "group"] + [f"{m}_present" for m in names])
        splits = np.asarray(table.column("split").to_pylist(), dtype=object)
        kept.update(splits.tolist())
        for split, group in zip(splits.tolist(), table.column("group").to_pylist()):
            if group is not None:
                groups[split].add(group)
        for m in names:
            mask = table.column(f"{m}_present").to_numpy(zero_copy_only=False)
            present[m].update(splits[mask].tolist())
    rejects = pq.read_table(directory / REJECTS_FILE).to_pylist()
    # loader rejects come first; each is one listed line (an AVE duplicate shares its id with
    # the kept line), the others are keyed by sample
    from_shards = rejects[len(listing.rejects):]
    affected = len(listing.rejects) + len({(r["split"], r["id"]) for r in from_shards})
    dropped = len(listing.rejects) + len({(r["split"], r["id"]) for r in from_shards if r["sample_dropped"]})
    reasons = Counter((r["modality"] or "sample", _reason_key(r["reason"], r["path"])) for r in rejects)
    return Summary(
        listed={s: listed.get(s, 0) for s in SPLITS},
        kept={s: kept.get(s, 0) for s in SPLITS},
        present={m: {s: c.get(s, 0) for s in SPLITS} for m, c in present.items()},
        dropped=dropped,
        affected=affected,
        reasons=[(m, reason, n) for (m, reason), n in reasons.most_common()],
        groups={s: sorted(g) for s, g in groups.items()} if any(groups.values()) else None,
        group_name=listing.group_name,
    )


def _reason_key(reason: str, path: str | None) -> str:
    """A reject reason with its file path and numbers elided, so that like reasons group."""
    if path:
        reason = reason.replace(path, "…")
    return re.sub(r"\d+(\.\d+)?", "N", reason)
