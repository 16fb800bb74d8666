"""The tables of an aggregated report (:class:`~pipelines.reports.aggregate.Aggregate`), in the
shared :class:`~pipelines.reports.tables.Table` model, so the terminal, Markdown, LaTeX and HTML
show the same cells.

Per snapshot: mean ± std per group side by side (the paper table, best bold), the statistics per
group (n, mean, std, 95% CI) and the paired comparison with the baseline (per-pair differences,
wins/ties/losses, Wilcoxon and paired t p-values); per class and over clients on request.
"""

from __future__ import annotations

from typing import Sequence

from pipelines.reports.aggregate import CONFIDENCE, Aggregate, Group
from pipelines.reports.analysis import Key
from pipelines.reports.load import SNAPSHOT_LABELS
from pipelines.reports.tables import (
    BEST_NOTE, DELTA_KINDS, METRIC_KINDS, METRIC_LABELS, MISSING, TABLE_SUMMARY_METRICS, UNITS_NOTE, Cell, Document,
    Table, mark_best, unsigned,
)

#: the per-path numbers aggregated in tables (JSON and CSV hold every number)
AGGREGATE_METRICS = tuple(m for m in TABLE_SUMMARY_METRICS if m not in ("rows", "worst_class"))
#: statistics over clients shown with --per-client
CLIENT_METRICS = (("mean", "mean over clients"), ("std", "std over clients"), ("worst10_mean", "worst-10% mean"))
STATS_NOTE = (f"Mean and sample std (ddof=1) over the group's finished runs; {round(100 * CONFIDENCE)}% CI of the "
              "mean = mean ± t(0.975; n−1)·std/√n (Student t); n/a with n < 2.")
PAIRED_NOTE = ("Runs paired by seed and partition; Δ = group − baseline per pair, its mean ± std and t interval; "
               "W/T/L = pairs where the group is better / equal / worse. p: two-sided Wilcoxon signed-rank "
               "(scipy.stats.wilcoxon, zero differences dropped; below 6 pairs it cannot reach 0.05) and paired "
               "t-test (scipy.stats.ttest_rel); n/a with fewer than 2 pairs, all differences zero, or (t-test) "
               "all differences equal.")


def _label(snapshot: str) -> str:
    return f"{SNAPSHOT_LABELS[snapshot]} ({'best on validation' if snapshot == 'best' else 'last round'})"


def _summary_keys(agg: Aggregate) -> tuple[list[tuple[list[Cell], Key]], set[int]]:
    """(label cells, key) of every path × metric row, and the rows after which a path ends."""
    specs, separators = [], set()
    for path in agg.paths:
        for m in AGGREGATE_METRICS:
            if not (m == "fused_minus_path" and path == "fused"):
                specs.append(([Cell(path), Cell(METRIC_LABELS[m])], Key("summary", path=path, metric=m)))
        separators.add(len(specs) - 1)
    return specs, separators


def groups_table(agg: Aggregate) -> Table:
    rows = []
    several_partitions = len({m.partition for m in agg.members}) > 1
    for g in agg.groups:
        seeds = ", ".join(str(m.seed) if not several_partitions else f"{m.seed}/{m.partition}"
                          for m in sorted(g.members, key=lambda m: (m.seed is None, m.seed or 0, str(m.partition))))
        partitions = ", ".join(dict.fromkeys(m.partition or "?" for m in g.members))
        skipped = "; ".join(f"{s.name} ({s.status})" for s in g.skipped) or MISSING
        rows.append([Cell(g.label), Cell("baseline" if g is agg.baseline else ""), Cell(", ".join(g.methods)),
                     Cell(len(g.members), "int"), Cell(len(g.skipped), "int"), Cell(seeds or MISSING),
                     Cell(partitions or MISSING), Cell(skipped)])
    columns = ["group", "role", "method", "n runs", "skipped", "seeds" + ("/partition" if several_partitions else ""),
               "partition", "skipped runs (unfinished)"]
    note = f"{agg.title}. n runs = finished runs aggregated; unfinished runs are skipped and listed."
    return Table("groups", "Groups", columns, rows, note)


def _mean_cells(agg: Aggregate, snapshot: str, key: Key) -> list[Cell]:
    """Each group's mean ± std of ``key``, the best bold."""
    cells = []
    for g in agg.groups:
        s = agg.summary(snapshot, g, key)
        cells.append(Cell(s.mean if s else None, METRIC_KINDS.get(key.metric, "num"), spread=s.std if s else None))
    return mark_best(cells, key.metric)


def mean_table(agg: Aggregate, snapshot: str, key: str, title: str, label_columns: Sequence[str],
               specs: Sequence[tuple[list[Cell], Key]], note: str = "", separators: set[int] | None = None) -> Table:
    """Rows = ``specs``; a column per group with its mean ± std (the table a paper shows)."""
    rows = [list(labels) + _mean_cells(agg, snapshot, k) for labels, k in specs]
    n = ", ".join(f"{g.label} {len(g.members)}" for g in agg.groups)
    note = f"{note} Mean ± std (ddof=1) over runs; n: {n}. {BEST_NOTE}".strip()
    return Table(key, title, list(label_columns) + [g.label for g in agg.groups], rows, note, separators or set(),
                 len(label_columns))


def stats_table(agg: Aggregate, snapshot: str) -> Table:
    specs, separators = _summary_keys(agg)
    rows, seps = [], set()
    for i, (labels, key) in enumerate(specs):
        kind = METRIC_KINDS.get(key.metric, "num")
        for g in agg.groups:
            s = agg.summary(snapshot, g, key)
            rows.append(labels + [Cell(g.label)] + ([Cell(s.n, "int"), Cell(s.mean, kind), Cell(s.std, unsigned(kind)),
                                                      Cell((s.ci_low, s.ci_high), kind)]
                                                     if s else [Cell(0, "int")] + [Cell(None)] * 3))
        if i in separators:
            seps.add(len(rows) - 1)
    ci = f"{round(100 * CONFIDENCE)}% CI"
    return Table(f"aggregate.stats.{snapshot}", f"Statistics over runs · {_label(snapshot)}",
                 ["path", "metric", "group", "n", "mean", "std", ci], rows, STATS_NOTE, seps, 3)


def _pair_text(pairs: Sequence[str], differences: Sequence[float], kind: str) -> str:
    return ", ".join(f"{p} {Cell(d, kind).text}" for p, d in zip(pairs, differences)) or MISSING


def paired_table(agg: Aggregate, snapshot: str, others: Sequence[Group]) -> Table:
    specs, separators = _summary_keys(agg)
    rows, seps = [], set()
    for i, (labels, key) in enumerate(specs):
        kind = DELTA_KINDS.get(METRIC_KINDS.get(key.metric, "num"), "dnum")
        for g in others:
            p = agg.paired_with(snapshot, g, key)
            if p is None:
                continue
            d = p.difference
            wtl = MISSING if p.wins is None else f"{p.wins}/{p.ties}/{p.losses}"
            rows.append(labels + [Cell(g.label), Cell(d.n, "int"), Cell(d.mean, kind, spread=d.std),
                                  Cell((d.ci_low, d.ci_high), kind), Cell(_pair_text(p.pairs, d.values, kind)),
                                  Cell(wtl), Cell(p.wilcoxon.p, "p"), Cell(p.ttest.p, "p")])
        if i in separators and rows:
            seps.add(len(rows) - 1)
    ci = f"Δ {round(100 * CONFIDENCE)}% CI"
    return Table(f"aggregate.paired.{snapshot}",
                 f"Paired differences vs baseline {agg.baseline.label} · {_label(snapshot)}",
                 ["path", "metric", "group", "pairs", "Δ mean ± std", ci, "Δ per pair", "W/T/L", "p Wilcoxon",
                  "p t-test"], rows, PAIRED_NOTE, seps, 3)


def aggregate_tables(agg: Aggregate, *, per_class: bool, per_client: bool) -> list[Table]:
    """The groups, then per snapshot: mean ± std per group, statistics, paired differences and,
    on request, per-class recall and statistics over clients."""
    tables = [groups_table(agg)]
    others = [g for g in agg.groups if g is not agg.baseline]
    for snapshot in agg.snapshots:
        label = _label(snapshot)
        specs, separators = _summary_keys(agg)
        tables.append(mean_table(agg, snapshot, f"aggregate.summary.{snapshot}", f"Mean ± std over runs · {label}",
                                 ["path", "metric"], specs, separators=separators))
        tables.append(stats_table(agg, snapshot))
        if others:
            tables.append(paired_table(agg, snapshot, others))
        if per_class:
            for path in agg.paths:
                specs = [([Cell(c)], Key("per_class", path=path, cls=c, metric="recall")) for c in agg.classes]
                tables.append(mean_table(agg, snapshot, f"aggregate.per_class.{path}.{snapshot}",
                                         f"Per-class recall · {path} · {label}", ["class"], specs))
        if per_client:
            specs = [([Cell(text)], Key("clients", metric=m)) for m, text in CLIENT_METRICS]
            tables.append(mean_table(agg, snapshot, f"aggregate.clients.{snapshot}", f"Accuracy over clients · {label}",
                                     ["statistic"], specs, "The model's accuracy on each client's own data."))
    return tables


def aggregate_document(agg: Aggregate, *, per_class: bool, per_client: bool) -> Document:
    legend = (f"{UNITS_NOTE} Every number is recomputed from each run's saved predictions, then aggregated over "
              f"the runs of a group. Baseline: {agg.baseline.label}.")
    return Document(f"cmi report: {agg.title}", agg.notes, legend,
                    aggregate_tables(agg, per_class=per_class, per_client=per_client))
