"""The one place that defines cmi's artifacts: workspace layout, manifests, validation, atomic writes.

A workspace holds one directory per artifact kind::

    <workspace>/datasets/<name>/manifest.json     written by `cmi prepare`
    <workspace>/partitions/<name>/manifest.json   written by `cmi partition`
    <workspace>/runs/<name>/manifest.json         written by `cmi train`
    <workspace>/experiments/<name>/manifest.json  written by `cmi experiment run` (its runs are in runs/)

and a ``LATEST`` file per kind directory naming the most recently completed artifact, so that
each stage finds its input without paths. A dataset or partition is complete once its manifest
exists (the manifest is written last); a run writes its manifest when it starts and updates its
``status`` as it goes, because a report of an unfinished run is still useful.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipelines.errors import CmiError

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"

#: kind -> (schema version, directory under the workspace, command that produces it)
KINDS: dict[str, tuple[int, str, str]] = {
    "dataset": (1, "datasets", "cmi prepare DATASET"),
    "partition": (1, "partitions", "cmi partition"),
    "run": (1, "runs", "cmi train"),
    "experiment": (1, "experiments", "cmi experiment run FILE"),
}

DEFAULT_WORKSPACE = "cmi-workspace"
WORKSPACE_ENV = "CMI_WORKSPACE"


class ArtifactError(CmiError):
    """An input artifact is missing, of the wrong kind or version, or corrupt.

    The message always says which command produces what is missing.
    """


# ----------------------------------------------------------------------------- atomic writes


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was, so a reader
    never sees a half-written file (kill -9 leaves at worst a stray ``.tmp-*`` file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; artifacts are meant to be shared
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, canonical_json(obj, indent=2) + "\n")


def atomic_write_parquet(path: str | os.PathLike, table: Any) -> None:
    """Write a pyarrow Table as zstd Parquet, atomically."""
    import pyarrow.parquet as pq  # late: most callers of this module never write Parquet

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


# ----------------------------------------------------------------------------- fingerprints


def canonical_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a JSON-serialisable object (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Artifact:
    """A validated artifact directory and its manifest."""

    kind: str
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def params(self) -> dict[str, Any]:
        return self.manifest.get("params", {})

    def file(self, relpath: str) -> Path:
        return self.path / relpath


def write_manifest(
    directory: str | os.PathLike,
    kind: str,
    params: dict[str, Any],
    *,
    inputs: dict[str, str] | None = None,
    files: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<directory>/manifest.json`` atomically and return it.

    ``inputs`` maps an input's role to its fingerprint; ``files`` are paths relative to
    ``directory`` whose sha256 is recorded. The artifact's fingerprint covers kind, schema,
    params, inputs and content checksums, not the creation time, so the same inputs give the
    same fingerprint.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    directory = Path(directory)
    checksums = {rel: file_sha256(directory / rel) for rel in sorted(files or [])}
    body = {
        "kind": kind,
        "schema_version": KINDS[kind][0],
        "params": params,
        "inputs": inputs or {},
        "checksums": checksums,
    }
    manifest = dict(body)
    manifest["fingerprint"] = fingerprint(body)
    manifest["created_at"] = utc_now()
    if extra:
        overlap = set(extra) & set(manifest)
        if overlap:
            raise ValueError(f"extra manifest keys clash with reserved ones: {sorted(overlap)}")
        manifest.update(extra)
    atomic_write_json(directory / MANIFEST_NAME, manifest)
    return manifest


def update_manifest(directory: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Update non-reserved fields (e.g. a run's ``status``) of an existing manifest atomically."""
    path = Path(directory) / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    reserved = {"kind", "schema_version", "params", "inputs", "checksums", "fingerprint"}
    if set(fields) & reserved:
        raise ValueError(f"cannot update reserved manifest keys {sorted(set(fields) & reserved)}")
    manifest.update(fields)
    atomic_write_json(path, manifest)
    return manifest


def load_artifact(directory: str | os.PathLike, kind: str, *, verify: bool = False) -> Artifact:
    """Read and validate an artifact directory of ``kind``.

    Raises :class:`ArtifactError` naming the producing command when the directory or its
    manifest is missing, unreadable, of another kind or of an unsupported schema version.
    ``verify=True`` also re-checks every recorded file checksum.
    """
    version, _, producer = KINDS[kind]
    directory = Path(directory)
    mpath = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ArtifactError(f"no {kind} at {directory}: run `{producer}` to create one.")
    if not mpath.is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST_NAME}: it is not a complete {kind} "
            f"(interrupted?). Run `{producer}` again; it resumes where it stopped."
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{mpath} is unreadable ({exc}); re-create it with `{producer}`.") from exc
    found = manifest.get("kind")
    if found != kind:
        raise ArtifactError(
            f"{directory} holds a {found!r} artifact, not a {kind}; a {kind} is made by `{producer}`."
        )
    if manifest.get("schema_version") != version:
        raise ArtifactError(
            f"{directory} is a {kind} of schema version {manifest.get('schema_version')}, this cmi "
            f"reads version {version}; re-create it with `{producer} --force`."
        )
    if "fingerprint" not in manifest:
        raise ArtifactError(f"{mpath} has no fingerprint; re-create it with `{producer} --force`.")
    artifact = Artifact(kind, directory, manifest)
    if verify:
        verify_checksums(artifact)
    return artifact


def verify_checksums(artifact: Artifact) -> None:
    producer = KINDS[artifact.kind][2]
    for rel, digest in artifact.manifest.get("checksums", {}).items():
        path = artifact.path / rel
        if not path.is_file():
            raise ArtifactError(f"{artifact.path}: file {rel} is missing; re-create it with `{producer} --force`.")
        if file_sha256(path) != digest:
            raise ArtifactError(
                f"{artifact.path}: file {rel} does not match its checksum (modified or corrupt); "
                f"re-create it with `{producer} --force`."
            )


# ----------------------------------------------------------------------------- workspace


class Workspace:
    """A cmi workspace directory: where every stage reads its input and writes its output."""

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            root = os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def kind_dir(self, kind: str) -> Path:
        return self.root / KINDS[kind][1]

    def artifact_dir(self, kind: str, name: str) -> Path:
        if not name or "/" in name or name in {".", ".."}:
            raise ValueError(f"invalid {kind} name {name!r}")
        return self.kind_dir(kind) / name

    def set_latest(self, kind: str, name: str) -> None:
        atomic_write_text(self.kind_dir(kind) / LATEST_NAME, name + "\n")

    def latest_name(self, kind: str) -> str | None:
        pointer = self.kind_dir(kind) / LATEST_NAME
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8").strip()
            if name and (self.kind_dir(kind) / name / MANIFEST_NAME).is_file():
                return name
        # Fall back to the newest complete artifact (e.g. LATEST's target was deleted).
        candidates = sorted(
            (p.stat().st_mtime, p.parent.name)
            for p in self.kind_dir(kind).glob(f"*/{MANIFEST_NAME}")
        ) if self.kind_dir(kind).is_dir() else []
        return candidates[-1][1] if candidates else None

    def list(self, kind: str) -> list[str]:
        d = self.kind_dir(kind)
        if not d.is_dir():
            return []
        return sorted(p.parent.name for p in d.glob(f"*/{MANIFEST_NAME}"))

    def resolve(self, kind: str, ref: str | os.PathLike | None = None, *, verify: bool = False) -> Artifact:
        """Find an artifact of ``kind``: ``ref`` may be a name in this workspace, a path, or None
        for the latest one. Errors name the command that produces the missing artifact."""
        producer = KINDS[kind][2]
        if ref is None:
            name = self.latest_name(kind)
            if name is None:
                raise ArtifactError(
                    f"no {kind} in workspace {self.root}: run `{producer}` first "
                    f"(or pass --workspace / set {WORKSPACE_ENV} to the workspace that has one)."
                )
            return load_artifact(self.kind_dir(kind) / name, kind, verify=verify)
        ref_path = Path(ref)
        if not ref_path.is_absolute() and len(ref_path.parts) == 1 and (self.kind_dir(kind) / ref_path).is_dir():
            return load_artifact(self.kind_dir(kind) / ref_path, kind, verify=verify)
        if ref_path.is_dir():
            return load_artifact(ref_path, kind, verify=verify)
        known = ", ".join(self.list(kind)) or "none"
        raise ArtifactError(
            f"no {kind} named {str(ref)!r} in workspace {self.root} (known: {known}); "
            f"`{producer}` creates one."
        )


# ----------------------------------------------------------------------------- file names inside artifacts
#
# dataset   (cmi prepare)   manifest extra: dataset, classes, modalities [ModalitySpec dicts], shards
#                           [relpaths], counts {split: n}, rejects (n); files: shards/part-NNNNN.parquet
#                           (schema: pipelines.shards), rejects.parquet (id, split, modality, path, reason)
# partition (cmi partition) manifest extra: dataset (name), classes, modalities [names], num_clients
#   assignments.parquet     one row per TRAIN sample in dataset order: id string, client int32,
#                           <m> bool per modality (sample really has m after missingness)
#   clients.parquet         one row per client: client int32, n_samples int64, group string (natural
#                           splits, else null), <m> bool per modality (client holds m at all)
#   stats.json              class_counts [clients x classes], heterogeneity measures
#   heatmap.png             clients x classes counts, modality availability marked
# run       (cmi train)     manifest extra: status (running|complete|diverged|failed), method, engine,
#                           dataset, partition (names), classes, modalities, eval_paths, rounds_done,
#                           best_round
#   config.json             fully resolved training config
#   metrics.jsonl           one JSON object per evaluated round (see pipelines.training)
#   predictions/test-{final,best}.parquet     id, label, pred_<path> int32 per eval path
#   predictions/clients-{final,best}.parquet  id, client, label, pred int32 (global model on each
#                                             client's own training data, path by availability)
#   checkpoints/            model weights (safetensors) and resumable state
# experiment (cmi experiment run)  manifest params: the grid and its cells, extra: status, jobs (see
#                           pipelines.experiments.record); experiment.toml (the resolved experiment file)

PARTITION_ASSIGNMENTS = "assignments.parquet"
PARTITION_CLIENTS = "clients.parquet"
PARTITION_STATS = "stats.json"
PARTITION_HEATMAP = "heatmap.png"

RUN_CONFIG = "config.json"
RUN_METRICS = "metrics.jsonl"
RUN_PREDICTIONS_DIR = "predictions"
RUN_CHECKPOINTS_DIR = "checkpoints"
RUN_STATUSES = ("running", "complete", "diverged", "failed")


def eval_paths(modalities: list[str]) -> list[str]:
    """Names of the evaluated prediction paths for a set of modalities, in report order:
    ``fused``, then ``<m>_only`` (the unimodal path of the spec) and ``<m>_self`` per modality."""
    return ["fused"] + [f"{m}_only" for m in modalities] + [f"{m}_self" for m in modalities]
