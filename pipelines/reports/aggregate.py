"""Aggregated reports: runs grouped by method (or any config key), statistics over seeds.

Every per-run number is :func:`~pipelines.reports.analysis.snapshot_report`'s, recomputed from the
run's saved predictions (the same metrics as a single-run report); this module only aggregates:

- **Per group** (the runs sharing the ``--group-by`` values, by default an experiment cell's method
  and grid overrides), per snapshot and number: ``n`` runs with a defined value, their mean, the
  sample standard deviation (ddof=1) and the 95% confidence interval of the mean,
  ``mean ± t(0.975; n−1) · std / √n`` (Student t, ``scipy.stats.t``). With n < 2 the std and the
  interval are NaN (shown "n/a").
- **Paired differences** of every other group against the baseline group (``--baseline``, default
  the first group): runs are paired by (seed, partition); per pair ``other − baseline``, the
  differences' mean, std and t interval as above, wins / ties / losses in the metric's better
  direction (none for numbers without one), and two two-sided paired tests on them: the Wilcoxon
  signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped) and the paired t-test
  (``scipy.stats.ttest_rel``). A test that cannot be computed (fewer than 2 pairs, every difference
  zero, or for the t-test every difference equal) has a NaN p-value and :attr:`Test.note` says why.
- Only finished runs (:attr:`~pipelines.reports.load.RunData.complete`) are aggregated; the others
  are listed as skipped in their group (and in the report's notes).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

from pipelines.artifacts import MANIFEST_NAME, Workspace
from pipelines.errors import CmiError
from pipelines.reports.analysis import Key, RunReport, check_same_classes, run_report, select_paths
from pipelines.reports.load import RunData, load_run
from pipelines.reports.tables import BETTER

#: two-sided confidence level of every interval
CONFIDENCE = 0.95
#: a difference this close to zero is a tie (two runs' equal rates differ by rounding noise at most)
TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Member:
    """A finished run of a group, with what pairs it with the other groups' runs."""

    run: RunReport
    seed: int | None
    partition: str | None

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def pair_key(self) -> tuple[int | None, str | None]:
        return self.seed, self.partition


@dataclass(frozen=True)
class Skipped:
    """A run (or experiment cell) of a group left out of the statistics because it is unfinished."""

    name: str
    status: str


@dataclass(frozen=True)
class Group:
    label: str
    members: list[Member]
    skipped: list[Skipped]

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m.run.run.method for m in self.members))


@dataclass(frozen=True)
class Summary:
    """``values`` (NaN = undefined, left out) and the statistics of the defined ones: ``n``, mean,
    sample std (ddof=1) and the 95% t interval of the mean (NaN std and interval when n < 2)."""

    values: tuple[float, ...]
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Test:
    """A paired test's two-sided p-value (NaN when it cannot be computed, ``note`` saying why)."""

    name: str
    p: float
    note: str = ""


@dataclass(frozen=True)
class Paired:
    """One number of a group against the baseline: per pair (``pairs`` labels them, e.g. ``s0``)
    the difference other − baseline, their :class:`Summary`, wins / ties / losses (None for a
    number with no better direction) and the Wilcoxon and paired t tests."""

    pairs: tuple[str, ...]
    difference: Summary
    wins: int | None
    ties: int | None
    losses: int | None
    wilcoxon: Test
    ttest: Test


@dataclass(frozen=True)
class Aggregate:
    """Groups of runs and their statistics per snapshot: ``stats[snapshot][group][key]`` and, for
    each group but the baseline, ``paired[snapshot][group][key]``. ``html_path`` is where an HTML
    report goes by default (in the experiment's directory, or the first run's)."""

    title: str
    group_by: tuple[str, ...]
    groups: list[Group]
    baseline: Group
    snapshots: tuple[str, ...]
    paths: list[str]
    classes: list[str]
    stats: dict[str, dict[str, dict[Key, Summary]]]
    paired: dict[str, dict[str, dict[Key, Paired]]]
    notes: list[str]
    html_path: Path
    experiment: str | None = None

    @property
    def members(self) -> list[Member]:
        return [m for g in self.groups for m in g.members]

    def summary(self, snapshot: str, group: Group, key: Key) -> Summary | None:
        return self.stats.get(snapshot, {}).get(group.label, {}).get(key)

    def paired_with(self, snapshot: str, group: Group, key: Key) -> Paired | None:
        return self.paired.get(snapshot, {}).get(group.label, {}).get(key)


# ----------------------------------------------------------------------------- statistics


def summarise(values: np.ndarray) -> list[Summary]:
    """A :class:`Summary` per column of ``values`` (rows = runs or pairs; NaN = undefined)."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    n = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(defined, values, 0.0).sum(axis=0) / n
        squares = (np.where(defined, values - mean, 0.0) ** 2).sum(axis=0)
        std = np.where(n >= 2, np.sqrt(squares / (n - 1)), np.nan)
        half = sps.t.ppf(0.5 + CONFIDENCE / 2, np.maximum(n - 1, 1)) * std / np.sqrt(n)
    return [Summary(tuple(float(v) for v in values[:, j]), int(n[j]), float(mean[j]), float(std[j]),
                    float(mean[j] - half[j]), float(mean[j] + half[j])) for j in range(values.shape[1])]


def paired_tests(other: np.ndarray, base: np.ndarray) -> tuple[Test, Test]:
    """Wilcoxon signed-rank and paired t-test (two-sided) of ``other`` against ``base`` (paired
    1-D arrays; pairs with a NaN are left out). Differences within :data:`TIE_TOLERANCE` of zero
    count as zero."""
    keep = ~(np.isnan(other) | np.isnan(base))
    other, base = other[keep], base[keep]
    diff = other - base
    zero = np.abs(diff) <= TIE_TOLERANCE
    if diff.size < 2:
        reason = f"n/a: {diff.size} pair{'s' if diff.size != 1 else ''}, a paired test needs 2"
        return Test("wilcoxon", math.nan, reason), Test("ttest_rel", math.nan, reason)
    if zero.all():
        reason = "n/a: every difference is zero"
        return Test("wilcoxon", math.nan, reason), Test("ttest_rel", math.nan, reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample notices; the note says what was done
        wilcoxon = Test("wilcoxon", float(sps.wilcoxon(np.where(zero, 0.0, diff), zero_method="wilcox").pvalue))
        if np.ptp(diff) <= TIE_TOLERANCE:
            ttest = Test("ttest_rel", math.nan, "n/a: every difference is equal (no variance)")
        else:
            ttest = Test("ttest_rel", float(sps.ttest_rel(other, base).pvalue))
    return wilcoxon, ttest


def _numeric_keys(reports: Sequence[dict[Key, Any]], paths: Sequence[str]) -> list[Key]:
    """Numeric keys of any of ``reports`` (first-seen order) on the selected paths, per-client
    numbers left out (client ids mean nothing across partitions)."""
    keys: dict[Key, None] = {}
    for values in reports:
        for k, v in values.items():
            if (k.section != "per_client" and (not k.path or k.path in paths)
                    and isinstance(v, (int, float)) and not isinstance(v, bool)):
                keys.setdefault(k)
    return list(keys)


def _matrix(members: Sequence[Member], snapshot: str, keys: Sequence[Key]) -> np.ndarray:
    """(members, keys) float array of the members' ``snapshot`` numbers, NaN where absent."""
    out = np.full((len(members), len(keys)), np.nan)
    for i, member in enumerate(members):
        values = member.run.snapshots[snapshot].values
        out[i] = [values.get(k, math.nan) for k in keys]
    return out


def _pairing(base: Group, other: Group) -> tuple[list[int], list[int], list[str]]:
    """Indices into ``base.members`` and ``other.members`` of the runs paired by (seed,
    partition), ordered by seed then partition, and notes on runs that cannot be paired
    unambiguously."""
    notes = []
    unique = []
    for group in (base, other):
        counts = Counter(m.pair_key for m in group.members)
        shared = [m.name for m in group.members if counts[m.pair_key] > 1]
        if shared:
            notes.append(f"{group.label}: runs {', '.join(shared)} share a (seed, partition) and are left out of "
                         "the paired comparison; group by the setting that tells them apart (--group-by KEY).")
        unique.append({m.pair_key: i for i, m in enumerate(group.members) if counts[m.pair_key] == 1})
    common = sorted((k for k in unique[0] if k in unique[1]), key=lambda k: (k[0] is None, k[0] or 0, k[1] or ""))
    return [unique[0][k] for k in common], [unique[1][k] for k in common], notes


def _pair_label(member: Member, several_partitions: bool) -> str:
    seed = f"s{member.seed}" if member.seed is not None else "s?"
    return f"{seed}/{member.partition}" if several_partitions else seed


def _compare(base: Group, other: Group, snapshot: str, keys: list[Key], several_partitions: bool,
             notes: list[str]) -> dict[Key, Paired]:
    ib, io, pairing_notes = _pairing(base, other)
    notes += [n for n in pairing_notes if n not in notes]
    b = _matrix([base.members[i] for i in ib], snapshot, keys)
    o = _matrix([other.members[i] for i in io], snapshot, keys)
    diff = o - b
    labels = tuple(_pair_label(other.members[i], several_partitions) for i in io)
    direction = np.array([BETTER.get(k.metric, 0) for k in keys])
    signed = diff * direction
    wins = (signed > TIE_TOLERANCE).sum(axis=0)
    losses = (signed < -TIE_TOLERANCE).sum(axis=0)
    ties = (np.abs(diff) <= TIE_TOLERANCE).sum(axis=0)
    out = {}
    for j, (key, summary) in enumerate(zip(keys, summarise(diff))):
        scored = bool(direction[j])
        out[key] = Paired(labels, summary, int(wins[j]) if scored else None, int(ties[j]) if scored else None,
                          int(losses[j]) if scored else None, *paired_tests(o[:, j], b[:, j]))
    return out


# ----------------------------------------------------------------------------- grouping


def setting_label(key: str, value: Any) -> str:
    """How a group shows one ``--group-by`` value: the bare method name, else ``key=value``."""
    shown = "?" if value is None else str(value)
    return shown if key == "method" else f"{key}={shown}"


def _run_label(run: RunData, group_by: Sequence[str]) -> str:
    return ", ".join(setting_label(k, run.setting(k)) for k in group_by)


def _skipped_status(run: RunData) -> str:
    if run.status == "complete":
        return "complete, but predictions/test-final.parquet is missing"
    done = run.rounds_done if run.rounds_done is not None else "?"
    return f"{run.status}, {done}/{run.rounds_total or '?'} rounds"


class _Groups:
    """Groups in first-seen order, filled run by run."""

    def __init__(self, snapshots: Sequence[str]):
        self.snapshots = snapshots
        self.members: dict[str, list[Member]] = {}
        self.skipped: dict[str, list[Skipped]] = {}

    def _touch(self, label: str) -> None:
        self.members.setdefault(label, [])
        self.skipped.setdefault(label, [])

    def add(self, label: str, run: RunData, seed: int | None, partition: str | None) -> None:
        self._touch(label)
        if run.complete:
            self.members[label].append(Member(run_report(run, self.snapshots), seed, partition))
        else:
            self.skipped[label].append(Skipped(run.name, _skipped_status(run)))

    def skip(self, label: str, name: str, status: str) -> None:
        self._touch(label)
        self.skipped[label].append(Skipped(name, status))

    def groups(self) -> list[Group]:
        return [Group(label, self.members[label], self.skipped[label]) for label in self.members]


def group_runs(
    workspace: Workspace, refs: Sequence[str | Path], group_by: Sequence[str], *, baseline: str | None = None,
    snapshots: Sequence[str], paths: Sequence[str] | None = None,
) -> Aggregate:
    """Aggregate the runs ``refs`` (the latest run when empty), grouped by the values of the
    ``group_by`` keys (:meth:`RunData.setting`: ``method``, ``partition``, a dotted config key)."""
    if not group_by:
        raise CmiError("grouping runs needs a key: --group-by method (or a config key such as fedcmi.kappa).")
    runs = [load_run(workspace, ref) for ref in (refs or [None])]
    collected = _Groups(snapshots)
    for run in runs:
        collected.add(_run_label(run, group_by), run, run.seed, run.partition_name)
    names = "\n".join(sorted(r.name for r in runs))
    slug = hashlib.sha256(names.encode()).hexdigest()[:8]
    home = runs[0].artifact.path
    title = f"{len(runs)} runs grouped by {', '.join(group_by)}"
    return aggregate(title, collected.groups(), tuple(group_by), baseline=baseline, snapshots=snapshots,
                     paths=paths, home=home, html_name=f"grouped-{slug}.html")


def cell_label(method: str, overrides: dict[str, Any]) -> str:
    """An experiment cell's group: its method and grid overrides (the method's own keys without
    the ``method.`` prefix), e.g. ``fedcmi (kappa=2)``; the seed is what groups aggregate over."""
    shown = [f"{k.removeprefix(method + '.')}={v}" for k, v in overrides.items() if k != "seed"]
    return f"{method} ({', '.join(shown)})" if shown else method


def experiment_groups(
    workspace: Workspace, name: str, group_by: Sequence[str] = (), *, baseline: str | None = None,
    snapshots: Sequence[str], paths: Sequence[str] | None = None,
) -> Aggregate:
    """Aggregate the experiment ``name``'s cells (``cmi experiment run``): grouped by method and
    grid overrides, or by the ``group_by`` keys; cells not finished are listed as skipped."""
    from pipelines.experiments import load_experiment  # late: only --experiment needs it

    experiment = load_experiment(workspace, name)
    if not experiment.cells:
        raise CmiError(f"experiment {experiment.name!r} has no cells: nothing to report.")
    collected = _Groups(snapshots)
    for cell in experiment.cells:
        path = experiment.run_path(cell)
        run = load_run(workspace, path) if (path / MANIFEST_NAME).is_file() else None
        if group_by:
            fallback = {"method": cell.method, "seed": cell.seed, "partition": cell.partition}
            label = ", ".join(
                setting_label(k, run.setting(k) if run is not None else fallback.get(k, cell.overrides.get(k)))
                for k in group_by)
        else:
            label = cell_label(cell.method, cell.overrides)
        if run is None:
            collected.skip(label, cell.run, f"{cell.status}, no run directory yet")
        else:
            collected.add(label, run, cell.seed, cell.partition)
    title = f"experiment {experiment.name}"
    return aggregate(title, collected.groups(), tuple(group_by), baseline=baseline, snapshots=snapshots,
                     paths=paths, home=experiment.path, html_name="report.html", experiment=experiment.name)


def aggregate(
    title: str, groups: list[Group], group_by: tuple[str, ...], *, baseline: str | None,
    snapshots: Sequence[str], paths: Sequence[str] | None, home: Path, html_name: str,
    experiment: str | None = None,
) -> Aggregate:
    """Statistics of ``groups`` (see the module docstring); ``baseline`` names a group label
    (default: the first group)."""
    labels = [g.label for g in groups]
    if baseline is not None and baseline not in labels:
        raise CmiError(f"--baseline {baseline!r} is not a group; the groups are: {', '.join(labels)}.")
    base = groups[labels.index(baseline)] if baseline is not None else groups[0]
    members = [m for g in groups for m in g.members]
    runs = [m.run.run for m in members]
    check_same_classes(runs, "an aggregated report")
    selected = select_paths(runs, paths)
    notes = []
    for g in groups:
        if g.skipped:
            total = len(g.members) + len(g.skipped)
            listed = "; ".join(f"{s.name} ({s.status})" for s in g.skipped)
            notes.append(f"{g.label}: {len(g.members)} of {total} runs finished and aggregated; skipped "
                         f"(unfinished): {listed}.")
    if not members:
        notes.insert(0, "No finished run yet: nothing to aggregate.")
    notes += [f"{m.name}: {note}" for m in members for note in m.run.run.notes]
    several_partitions = len({m.partition for m in members}) > 1
    stats: dict[str, dict[str, dict[Key, Summary]]] = {}
    paired: dict[str, dict[str, dict[Key, Paired]]] = {}
    for snapshot in snapshots:
        keys = _numeric_keys([m.run.snapshots[snapshot].values for m in members], selected)
        stats[snapshot] = {g.label: dict(zip(keys, summarise(_matrix(g.members, snapshot, keys)))) for g in groups}
        paired[snapshot] = {g.label: _compare(base, g, snapshot, keys, several_partitions, notes)
                            for g in groups if g is not base}
    classes = runs[0].classes if runs else []
    return Aggregate(title, group_by, groups, base, tuple(snapshots), selected, classes, stats, paired, notes,
                     home / html_name, experiment)
