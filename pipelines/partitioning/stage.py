"""The `cmi partition` stage: settings, the in-memory split of the training samples, and the artifact.

Only the dataset's train split is partitioned (val / test stay global). Order of work:

1. train samples with no modality at all in the shards are left out (they cannot be trained on);
2. the remaining samples are split over clients (Dirichlet label skew, IID, or natural groups);
3. missing modalities are applied (client or sample level; a client or sample loses a non-empty
   proper subset of the modalities, see :mod:`pipelines.partitioning.missing`);
4. at client level, a sample whose only modalities are ones its client lost has nothing left and is
   left out too. Both exclusions are counted in stats.json ``excluded`` (0 for datasets in which
   every sample has every modality, the usual case).

Every client must keep at least ``--min-samples`` samples, whatever the strategy.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from pipelines.artifacts import (
    MANIFEST_NAME, PARTITION_ASSIGNMENTS, PARTITION_CLIENTS, PARTITION_HEATMAP, PARTITION_STATS, Artifact,
    ArtifactError, Workspace, atomic_path, atomic_write_json, load_artifact, write_manifest,
)
from pipelines.errors import CmiError
from pipelines.partitioning.dirichlet import split_dirichlet, split_iid
from pipelines.partitioning.heatmap import render_heatmap
from pipelines.partitioning.missing import (
    MISSING_LEVELS, client_level_missing, lost_set_count, mask_names, modality_mask, sample_level_missing,
)
from pipelines.partitioning.natural import encode_groups, group_column, split_by_group
from pipelines.partitioning.statistics import partition_statistics
from pipelines.partitioning.store import write_assignments, write_clients
from pipelines.shards import read_table

STRATEGIES = ("dirichlet", "iid", "natural")
DEFAULT_ALPHA = 0.5
DEFAULT_CLIENTS = 20
DEFAULT_MIN_SAMPLES = 2


def _lost_names(value: str | Iterable[str] | None) -> str | tuple[str, ...] | None:
    """``--missing-modality`` values (names, comma-separated or repeated) as the settings hold them:
    None, one name, or a tuple of several distinct names (in the order given)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for item in items for name in str(item).split(",")]
    if not items or any(not name for name in names):
        raise CmiError(
            f"--missing-modality needs modality names, e.g. --missing-modality audio or --missing-modality "
            f"accel,gyro (got {', '.join(map(repr, items)) or 'nothing'})."
        )
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else tuple(names)


@dataclass(frozen=True)
class PartitionSettings:
    """Canonical parameters of a partition (equal settings -> identical artifact)."""

    strategy: str = "dirichlet"
    alpha: float | None = DEFAULT_ALPHA   # dirichlet only
    by: str | None = None                 # natural only: the shard column holding the groups
    num_clients: int | None = DEFAULT_CLIENTS  # None only for natural: one client per group
    min_samples: int = DEFAULT_MIN_SAMPLES
    missing: float = 0.0
    missing_level: str = "client"
    #: the fixed lost set: None (drawn), one name, or a tuple of several (manifest order once
    #: checked against a dataset); params() stores one as a string, several as a list
    missing_modality: str | tuple[str, ...] | None = None
    seed: int = 0

    @classmethod
    def from_options(
        cls, *, alpha: float | None = None, iid: bool = False, by: str | None = None,
        clients: int | None = None, min_samples: int = DEFAULT_MIN_SAMPLES, missing: float = 0.0,
        missing_level: str = "client", missing_modality: str | Iterable[str] | None = None, seed: int = 0,
    ) -> "PartitionSettings":
        """Validate command-line options (those that need no dataset) and canonicalise them:
        no strategy -> Dirichlet(0.5); ``--alpha inf`` -> IID; missing 0 -> no level / modality.
        ``missing_modality``: a name, comma-separated names, or several of either (the repeated
        ``--missing-modality``): the set that is lost."""
        if sum((alpha is not None, iid, by is not None)) > 1:
            raise CmiError("--alpha, --iid and --by pick different strategies; give only one of them.")
        if alpha is not None and not alpha > 0:
            raise CmiError(
                f"--alpha must be > 0 (got {alpha}): 0.1 gives strong label skew, 100 near-IID clients, "
                "inf (or --iid) a uniform split."
            )
        if clients is not None and clients < 1:
            raise CmiError(f"--clients must be at least 1 (got {clients}).")
        if min_samples < 1:
            raise CmiError(f"--min-samples must be at least 1 (got {min_samples}): a client needs data to train.")
        if not 0.0 <= missing <= 1.0:
            raise CmiError(f"--missing is a fraction and must lie in [0, 1] (got {missing}); e.g. --missing 0.3.")
        if missing_level not in MISSING_LEVELS:
            raise CmiError(f"--missing-level must be one of {', '.join(MISSING_LEVELS)} (got {missing_level!r}).")
        if seed < 0:
            raise CmiError(f"--seed must be a non-negative integer (got {seed}).")
        if by is not None:
            strategy, alpha, by = "natural", None, group_column(by)
        elif iid or alpha == math.inf:
            strategy, alpha = "iid", None
        else:
            strategy, alpha = "dirichlet", DEFAULT_ALPHA if alpha is None else float(alpha)
        if clients is None and strategy != "natural":
            clients = DEFAULT_CLIENTS
        return cls(strategy, alpha, by, clients, min_samples, float(missing), missing_level,
                   _lost_names(missing_modality), seed)

    @property
    def lost_names(self) -> tuple[str, ...]:
        """The fixed lost set's names (empty: the set is drawn)."""
        if self.missing_modality is None:
            return ()
        return (self.missing_modality,) if isinstance(self.missing_modality, str) else tuple(self.missing_modality)

    def for_dataset(self, modalities: list[str], num_groups: int | None = None) -> "PartitionSettings":
        """Check the settings against a dataset's modalities (and group count for natural splits)
        and return them in canonical form for it."""
        for m in self.lost_names:
            if m not in modalities:
                raise CmiError(
                    f"--missing-modality {m!r} is not a modality of this dataset; use one of {', '.join(modalities)}."
                )
        if self.lost_names and set(self.lost_names) == set(modalities):
            raise CmiError(
                f"--missing-modality {','.join(self.lost_names)} would leave nothing: a client or sample always "
                f"keeps at least one modality; name at most {len(modalities) - 1} of {', '.join(modalities)}."
            )
        if self.missing > 0 and len(modalities) < 2:
            raise CmiError(
                f"--missing {self.missing:g} needs a multimodal dataset, but this one has only "
                f"{', '.join(modalities)}; use --missing 0 or partition a dataset with two modalities."
            )
        settings = self
        if len(self.lost_names) > 1:  # manifest order
            settings = replace(settings, missing_modality=tuple(m for m in modalities if m in self.lost_names))
        if self.missing == 0:
            settings = replace(settings, missing_level="client", missing_modality=None)
        if num_groups is not None and settings.num_clients == num_groups:
            settings = replace(settings, num_clients=None)
        return settings

    def params(self) -> dict[str, Any]:
        params = asdict(self)
        if isinstance(self.missing_modality, tuple):
            params["missing_modality"] = list(self.missing_modality)
        return params

    def name(self, dataset_name: str) -> str:
        """Artifact name derived from every parameter, e.g. ``cremad-dir0.5-c20-m0.3-s0``."""
        if self.strategy == "dirichlet":
            parts = [f"dir{self.alpha:g}"]
        elif self.strategy == "iid":
            parts = ["iid"]
        else:
            parts = [f"by-{self.by}"]
        if self.num_clients is not None:
            parts.append(f"c{self.num_clients}")
        if self.min_samples != DEFAULT_MIN_SAMPLES:
            parts.append(f"min{self.min_samples}")
        if self.missing > 0:
            parts.append(f"m{self.missing:g}")
            if self.missing_level != "client":
                parts.append(self.missing_level)
            if self.lost_names:
                parts.append("lose-" + "+".join(self.lost_names))
        parts.append(f"s{self.seed}")
        return "-".join([dataset_name, *parts])

    def describe(self, num_clients: int, num_modalities: int = 2) -> str:
        """One line for people, e.g. ``Dirichlet α=0.5 label skew, 20 clients, 30% of clients miss
        a modality`` (``one or more modalities`` when a drawn set may hold several)."""
        if self.strategy == "dirichlet":
            text = f"Dirichlet α={self.alpha:g} label skew"
        elif self.strategy == "iid":
            text = "IID (uniform) split"
        else:
            text = f"natural split by {self.by}" + (" (groups merged)" if self.num_clients else "")
        text += f", {num_clients} clients"
        if self.missing > 0:
            who = "clients" if self.missing_level == "client" else "training samples"
            which = "+".join(self.lost_names) or ("a modality" if num_modalities <= 2 else "one or more modalities")
            text += f", {self.missing:.0%} of {who} miss {which}"
        return text


@dataclass
class PartitionResult:
    """The split of one train split, aligned with its rows."""

    kept: np.ndarray                   # (N_train,) bool: rows assigned to a client
    client: np.ndarray                 # (N_kept,) int32
    available: dict[str, np.ndarray]   # m -> (N_kept,) bool, after missingness
    num_clients: int
    client_groups: list[str] | None    # natural splits: each client's group(s)
    missing: dict[str, Any]            # what the missingness step did (for stats.json)
    excluded: dict[str, int]


def _check_client_sizes(client: np.ndarray, num_clients: int, min_samples: int, fix: str) -> None:
    sizes = np.bincount(client, minlength=num_clients)
    if sizes.min() < min_samples:
        raise CmiError(
            f"client {int(sizes.argmin())} gets only {int(sizes.min())} training samples, fewer than "
            f"--min-samples {min_samples}; {fix}."
        )


def _split(
    labels: np.ndarray, num_classes: int, settings: PartitionSettings, group_codes: np.ndarray | None,
    group_names: list[str] | None,
) -> tuple[np.ndarray, int, list[str] | None]:
    """(client of every sample, number of clients, each client's groups or None)."""
    n, min_samples = len(labels), settings.min_samples
    if settings.strategy == "natural":
        client, client_groups = split_by_group(group_codes, group_names, settings.num_clients, settings.seed)
        _check_client_sizes(client, len(client_groups), min_samples,
                            "merge groups with a smaller --clients or lower --min-samples")
        return client, len(client_groups), client_groups
    num_clients = settings.num_clients
    if num_clients > n:
        raise CmiError(f"--clients {num_clients} is more than the {n} training samples of this dataset; lower --clients.")
    if num_clients * min_samples > n:
        raise CmiError(
            f"{num_clients} clients x --min-samples {min_samples} needs {num_clients * min_samples} "
            f"training samples, the dataset has {n}; lower --clients or --min-samples."
        )
    if settings.strategy == "iid":
        return split_iid(n, num_clients, settings.seed), num_clients, None
    return split_dirichlet(labels, num_classes, num_clients, settings.alpha, min_samples, settings.seed), num_clients, None


def _apply_missing(
    client: np.ndarray, present: dict[str, np.ndarray], num_clients: int, settings: PartitionSettings
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(availability of every sample per modality, what was stripped, for stats.json)."""
    modalities = list(present)
    settings.for_dataset(modalities)  # the lost set must be a proper subset of these modalities
    names = settings.lost_names
    fixed = modality_mask(names, modalities) if names else None
    summary: dict[str, Any] = {"level": settings.missing_level, "fraction": settings.missing,
                               "modality": settings.params()["missing_modality"]}
    if settings.missing_level == "client":
        available, lost = client_level_missing(client, present, num_clients, settings.missing, fixed, settings.seed)
        summary["clients"] = int((lost != 0).sum())
        summary["lost_modality"] = [lost_label(mask, modalities) for mask in lost.tolist()]
    else:
        available, lost = sample_level_missing(present, settings.missing, fixed, settings.seed)
        summary["samples_stripped"] = {m: int((lost >> i & 1).sum()) for i, m in enumerate(modalities)}
        if len(modalities) > 2:  # with two, every lost set is one modality: samples_stripped says it all
            sets = np.bincount(lost, minlength=lost_set_count(len(modalities)) + 1)
            summary["lost_sets"] = {lost_label(mask, modalities): int(sets[mask]) for mask in range(1, len(sets))}
    return available, summary


def lost_label(mask: int, modalities: list[str]) -> str | None:
    """A lost set as stats.json writes it: None for nothing, else its names joined by ``+``
    (manifest order), e.g. ``audio`` or ``accel+gyro``."""
    return "+".join(mask_names(mask, modalities)) or None


def partition_samples(
    labels: np.ndarray,
    present: dict[str, np.ndarray],
    num_classes: int,
    settings: PartitionSettings,
    groups: tuple[np.ndarray, list[str]] | None = None,
) -> PartitionResult:
    """Split training samples (``labels``, ``present`` per modality in manifest order, and
    ``groups`` = (codes, sorted names) for natural splits) over clients and apply missingness."""
    usable = np.logical_or.reduce(list(present.values()))
    rows = np.flatnonzero(usable)
    if len(rows) == 0:
        raise CmiError("the dataset's train split has no sample with a modality; re-create it with `cmi prepare`.")
    group_codes, group_names = (groups[0][rows], groups[1]) if groups is not None else (None, None)
    client, num_clients, client_groups = _split(labels[rows], num_classes, settings, group_codes, group_names)
    available, missing = _apply_missing(client, {m: mask[rows] for m, mask in present.items()}, num_clients, settings)

    has_any = np.logical_or.reduce(list(available.values()))
    if not has_any.all():  # client level only: samples that had only modalities their client lost
        client = client[has_any]
        available = {m: mask[has_any] for m, mask in available.items()}
        _check_client_sizes(
            client, num_clients, settings.min_samples,
            f"{int((~has_any).sum())} samples had only "
            f"{'the modality' if len(available) <= 2 else 'modalities'} their client lost; lower --missing or "
            "--min-samples, or try another --seed",
        )
    kept = np.zeros(len(labels), dtype=bool)
    kept[rows[has_any]] = True
    excluded = {"no_modality_in_shards": int(len(labels) - len(rows)), "lost_last_modality": int((~has_any).sum())}
    return PartitionResult(kept, client, available, num_clients, client_groups, missing, excluded)


@dataclass
class PartitionOutcome:
    artifact: Artifact
    stats: dict[str, Any]
    settings: PartitionSettings
    reused: bool  # an identical artifact existed; nothing was rewritten


def _existing(directory, params: dict[str, Any], dataset_fingerprint: str, force: bool) -> Artifact | None:
    """The complete, intact artifact at ``directory`` made from the same inputs, if any."""
    if not (directory / MANIFEST_NAME).is_file():
        return None
    try:
        artifact = load_artifact(directory, "partition", verify=True)
    except ArtifactError:
        return None
    if artifact.params != params and not force:
        raise CmiError(
            f"partition {directory.name!r} already exists with other parameters; choose another --name "
            "or pass --force to replace it."
        )
    same = artifact.params == params and artifact.manifest["inputs"].get("dataset") == dataset_fingerprint
    return artifact if same and artifact.file(PARTITION_HEATMAP).is_file() and not force else None


def run_partition(
    workspace: Workspace, settings: PartitionSettings, dataset_ref: str | None = None,
    name: str | None = None, force: bool = False,
) -> PartitionOutcome:
    """Partition a dataset's train split and write the partition artifact (manifest last), or reuse
    the identical one already there; the partition becomes the workspace's latest."""
    dataset = workspace.resolve("dataset", dataset_ref)
    classes = list(dataset.manifest["classes"])
    modalities = [spec["name"] for spec in dataset.manifest["modalities"]]
    columns = ["id", "label", *(f"{m}_present" for m in modalities)]
    if settings.strategy == "natural":
        columns.append(settings.by)
    table = read_table(dataset, columns, split="train")
    if table.num_rows == 0:
        raise CmiError(f"dataset {dataset.name!r} has no training samples; re-create it with `cmi prepare`.")
    labels = table.column("label").to_numpy().astype(np.int64)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ArtifactError(f"dataset {dataset.path} has labels outside its {len(classes)} classes; "
                            "re-create it with `cmi prepare ... --force`.")
    groups = encode_groups(table.column(settings.by)) if settings.strategy == "natural" else None
    settings = settings.for_dataset(modalities, len(groups[1]) if groups else None)
    name = name or settings.name(dataset.name)
    directory = workspace.artifact_dir("partition", name)
    params = settings.params()

    existing = _existing(directory, params, dataset.fingerprint, force)
    if existing is not None:
        workspace.set_latest("partition", name)
        return PartitionOutcome(existing, _load_stats(existing), settings, reused=True)

    present = {m: table.column(f"{m}_present").to_numpy() for m in modalities}
    result = partition_samples(labels, present, len(classes), settings, groups)
    stats = partition_statistics(result.client, labels[result.kept], result.available, result.num_clients, len(classes))
    stats.update(classes=classes, modalities=modalities,
                 description=settings.describe(result.num_clients, len(modalities)),
                 client_groups=result.client_groups, missing=result.missing, excluded=result.excluded)

    if directory.exists():  # stale or replaced: incomplete (no manifest) until rewritten
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    write_assignments(directory / PARTITION_ASSIGNMENTS, table.column("id").filter(pa.array(result.kept)),
                      result.client, result.available)
    write_clients(directory / PARTITION_CLIENTS, np.asarray(stats["client_sizes"]), result.client_groups,
                  {m: np.asarray(held) for m, held in stats["client_modalities"].items()})
    atomic_write_json(directory / PARTITION_STATS, stats)
    sizes = np.asarray(stats["client_sizes"], dtype=np.float64)[:, None]
    modality_share = np.stack([np.asarray(stats["modality_counts"][m]) for m in modalities], axis=1) / sizes
    with atomic_path(directory / PARTITION_HEATMAP) as tmp:
        render_heatmap(np.asarray(stats["class_counts"]), modality_share, classes, modalities,
                       f"{name}\n{stats['description']}", tmp)
    # The heatmap is a view of stats.json; it stays out of the checksums so that the fingerprint
    # does not depend on the matplotlib version.
    write_manifest(
        directory, "partition", params, inputs={"dataset": dataset.fingerprint},
        files=[PARTITION_ASSIGNMENTS, PARTITION_CLIENTS, PARTITION_STATS],
        extra={"dataset": dataset.name, "classes": classes, "modalities": modalities,
               "num_clients": result.num_clients},
    )
    workspace.set_latest("partition", name)
    return PartitionOutcome(load_artifact(directory, "partition"), stats, settings, reused=False)


def _load_stats(artifact: Artifact) -> dict[str, Any]:
    return json.loads(artifact.file(PARTITION_STATS).read_text(encoding="utf-8"))
