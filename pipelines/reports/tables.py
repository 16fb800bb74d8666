"""The report's tables, built from a :class:`~pipelines.reports.analysis.Report`, and their rich
rendering. Markdown and HTML render the same :class:`Table` objects.

Rates are shown in percent with one decimal; differences (deltas, gaps) in signed percentage
points; temperatures and the global imbalance ρ̄ with three decimals; client ids as ranges
(``0–3, 7``).
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from typing import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table as RichTable

from pipelines.reports.analysis import Key, Report, RunReport, Value
from pipelines.reports.load import SNAPSHOT_LABELS, RunData

#: how a metric's values are formatted: pct (x100), pp (signed x100), int, num (3 decimals), text
METRIC_KINDS = {
    "rows": "int", "coverage": "pct", "accuracy": "pct", "balanced_accuracy": "pct", "macro_f1": "pct",
    "worst_class": "text", "worst_class_recall": "pct", "recall_std": "pct", "recall_gap": "pct",
    "fused_minus_path": "pp", "support": "int", "recall": "pct", "temperature": "num", "samples": "int",
    "modalities": "text", "clients": "int", "mean": "pct", "std": "pct", "worst10_mean": "pct",
    "worst10_count": "int",
}
#: kind of a difference of two values of a kind
DELTA_KINDS = {"pct": "pp", "pp": "pp", "int": "dint", "num": "dnum"}
METRIC_LABELS = {
    "rows": "rows", "coverage": "coverage", "accuracy": "accuracy", "balanced_accuracy": "bal. acc",
    "macro_f1": "macro F1", "worst_class": "worst class", "worst_class_recall": "worst recall",
    "recall_std": "recall std", "recall_gap": "max−min", "fused_minus_path": "fused − path",
    "clients": "clients", "mean": "mean", "std": "std", "worst10_mean": "worst-10% mean",
    "worst10_count": "worst-10% count",
}
#: summary metrics shown in tables (``coverage`` is in JSON/CSV only)
TABLE_SUMMARY_METRICS = (
    "rows", "accuracy", "balanced_accuracy", "macro_f1", "worst_class", "worst_class_recall", "recall_std",
    "recall_gap", "fused_minus_path",
)
#: direction in which a metric improves (+1 up, -1 down); absent = no direction (counts, modality gap)
BETTER = {
    "accuracy": 1, "balanced_accuracy": 1, "macro_f1": 1, "worst_class_recall": 1, "recall": 1, "mean": 1,
    "worst10_mean": 1, "recall_std": -1, "recall_gap": -1, "std": -1,
}
UNITS_NOTE = "Rates in %; std, max−min and differences in percentage points."
BEST_NOTE = ("Bold: the best value of a row as printed (higher is better; lower for recall std, max−min and std "
             "over clients; counts and fused − path not bolded).")
DELTA_NOTE = ("Δ = run − baseline; blue = better, vermillion = worse (lower is better for recall std, max−min "
              "and std over clients; counts and fused − path are not coloured).")


#: how one number of a kind prints (pct/pp are fractions shown x100)
_FORMATS = {"pct": "{:.1f}", "pp": "{:+.1f}", "num": "{:.3f}", "dnum": "{:+.3f}", "int": "{:d}", "dint": "{:+d}"}
#: the unsigned kind a ``± spread`` of a kind prints as
_SPREAD_KINDS = {"pp": "pct", "dnum": "num", "dint": "int"}
MISSING = "—"
NOT_AVAILABLE = "n/a"


def format_number(value: Value | None, kind: str) -> str:
    """``value`` as the kind prints it (see :data:`METRIC_KINDS`; ``p`` is a p-value); "—" for a
    missing or NaN number ("n/a" for a p-value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_AVAILABLE if kind == "p" else MISSING
    if kind == "p":
        return "<0.001" if float(value) < 0.001 else f"{float(value):.3f}"
    if kind in ("pct", "pp"):
        return _FORMATS[kind].format(100 * float(value))
    if kind in ("int", "dint"):
        return _FORMATS[kind].format(int(round(float(value))))
    if kind in _FORMATS:
        return _FORMATS[kind].format(float(value))
    return str(value)


def unsigned(kind: str) -> str:
    """The kind a spread (a std) of a kind prints as: a signed kind's unsigned twin."""
    return _SPREAD_KINDS.get(kind, kind)


@dataclass(frozen=True)
class Cell:
    """A table value and how to print it (see :data:`METRIC_KINDS`; ``dint``/``dnum`` are signed,
    ``p`` a p-value).

    ``value`` is a number or text, or a (low, high) pair printed as an interval ``[low, high]``;
    ``spread`` adds ``± spread`` (a standard deviation). ``better`` is, for a comparison delta,
    +1 when its metric improves upwards, -1 downwards and 0 when neither (counts, the signed
    modality gap); :attr:`tone` says whether a delta improves. ``bold`` marks the best value of
    a row."""

    value: Value | tuple[float, float] | None
    kind: str = "text"
    better: int = 0
    spread: float | None = None
    bold: bool = False

    @property
    def pieces(self) -> tuple[str, str | None]:
        """(the value as printed, the spread as printed or None)."""
        v = self.value
        if isinstance(v, tuple):
            ends = [format_number(x, self.kind) for x in v]
            return (NOT_AVAILABLE if MISSING in ends else f"[{', '.join(ends)}]"), None
        main = format_number(v, self.kind)
        spread = self.spread
        if spread is None or main == MISSING or math.isnan(spread):
            return main, None
        return main, format_number(spread, unsigned(self.kind))

    @property
    def text(self) -> str:
        main, spread = self.pieces
        return main if spread is None else f"{main} ± {spread}"

    @property
    def tone(self) -> str | None:
        """"better" / "worse" for a non-zero comparison delta (as printed), else None."""
        text = self.text
        if not self.better or text[0] not in "+-" or not text.strip("+-0."):
            return None
        return "better" if (text[0] == "+") == (self.better > 0) else "worse"


def mark_best(cells: list[Cell], metric: str) -> list[Cell]:
    """``cells`` (the values of one metric side by side) with the best bold: the highest as
    printed, or the lowest for a metric that improves downwards (:data:`BETTER`); ties are all
    bold. Nothing is bold for a metric without a direction or when all printed values are equal."""
    direction = BETTER.get(metric, 0)
    shown = []
    for cell in cells:
        try:
            shown.append(float(cell.pieces[0]))
        except ValueError:
            shown.append(math.nan)
    finite = [x for x in shown if not math.isnan(x)]
    if not direction or len(set(finite)) < 2:
        return cells
    best = max(finite) if direction > 0 else min(finite)
    return [dataclasses.replace(c, bold=True) if x == best else c for c, x in zip(cells, shown)]


@dataclass
class Table:
    """A titled grid of cells. ``key`` is a stable id; ``separators`` are row indices after which
    a rule is drawn (between groups of rows); the first ``label_columns`` columns name the row."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""
    separators: set[int] = field(default_factory=set)
    label_columns: int = 1


def metric_cell(metric: str, value: Value | None) -> Cell:
    return Cell(value, METRIC_KINDS.get(metric, "text"))


def delta_cell(metric: str, value: float | None) -> Cell:
    return Cell(value, DELTA_KINDS.get(METRIC_KINDS.get(metric, "text"), "text"), BETTER.get(metric, 0))


def snapshot_title(run: RunReport, snapshot: str) -> str:
    """'test-best · round 7 (best on validation)', marked when the run is incomplete."""
    snap = run.snapshots.get(snapshot)
    label = SNAPSHOT_LABELS[snapshot]
    where = f" · round {snap.round}" if snap is not None and snap.round is not None else ""
    if snapshot == "best":
        meaning = "best on validation" if run.run.complete else "best on validation so far"
    else:
        meaning = "last round" if run.run.complete else "latest saved, run INCOMPLETE"
    return f"{label}{where} ({meaning})"


def _provenance(run: RunReport, snapshot: str) -> str:
    snap = run.snapshots[snapshot]
    text = f"Recomputed from {snap.file}."
    if snap.models > 1:
        text += f" Method {run.run.method}: pooled over {snap.models} client models (= mean recall across models)."
    return text


# ----------------------------------------------------------------------------- one run


def runs_table(report: Report) -> Table:
    rows = []
    for run in report.runs:
        r = run.run
        rounds = f"{r.rounds_done if r.rounds_done is not None else '?'}/{r.rounds_total or '?'}"
        snaps = ", ".join(f"{SNAPSHOT_LABELS[s]} r{v.round}" for s, v in run.snapshots.items()) or "none yet"
        status = r.status if r.complete else f"{r.status} · INCOMPLETE"
        role = "baseline" if run is report.baseline else ("compared" if report.compare else "")
        rows.append([Cell(x) for x in (r.name, role, r.method, r.dataset, r.partition_name or "?", status,
                                       rounds, r.best_round, snaps)])
    columns = ["run", "role", "method", "dataset", "partition", "status", "rounds", "best round", "predictions"]
    if not report.compare:
        columns.pop(1)
        rows = [row[:1] + row[2:] for row in rows]
    return Table("runs", "Runs", columns, rows)


def summary_table(report: Report, run: RunReport, snapshot: str) -> Table:
    paths = [p for p in report.paths if p in run.run.eval_paths]
    rows = [
        [Cell(p)] + [metric_cell(m, report.value(run, snapshot, Key("summary", path=p, metric=m)))
                     for m in TABLE_SUMMARY_METRICS]
        for p in paths
    ]
    columns = ["path"] + [METRIC_LABELS[m] for m in TABLE_SUMMARY_METRICS]
    note = (f"{_provenance(run, snapshot)} Class averages over the classes present; fused − path: accuracy "
            "difference on the rows where both paths are defined.")
    return Table(f"summary.{run.name}.{snapshot}", f"Fairness summary · {run.name} · {snapshot_title(run, snapshot)}",
                 columns, rows, note)


def per_class_table(report: Report, run: RunReport, snapshot: str) -> Table:
    paths = [p for p in report.paths if p in run.run.eval_paths]
    snap = run.snapshots[snapshot]
    has_t = any(k.metric == "temperature" for k in snap.values)
    rows = []
    for cls in run.run.classes:
        row = [Cell(cls), metric_cell("support", snap.values.get(Key("per_class", cls=cls, metric="support")))]
        row += [metric_cell("recall", snap.values.get(Key("per_class", path=p, cls=cls, metric="recall")))
                for p in paths]
        if has_t:
            row.append(metric_cell("temperature", snap.values.get(Key("per_class", cls=cls, metric="temperature"))))
        rows.append(row)
    columns = ["class", "support", *paths] + (["T"] if has_t else [])
    note = _provenance(run, snapshot) + " Support = distinct test samples."
    if has_t:
        note += f" T = FedCMI class temperature logged at round {snap.round} (metrics.jsonl)."
    return Table(f"per_class.{run.name}.{snapshot}",
                 f"Per-class recall · {run.name} · {snapshot_title(run, snapshot)}", columns, rows, note)


def _client_ids(report: Report, snapshot: str) -> list[str]:
    """Client ids with a per-client accuracy in any run's ``snapshot``, ascending."""
    ids = {k.client for run in report.runs for k in report.values(run, snapshot) if k.section == "per_client"}
    return sorted(ids, key=int)


def _client_stat_rows(report: Report, run: RunReport, snapshot: str) -> list[tuple[str, Key]]:
    """(label, key) of the statistics over clients: overall, then per modality group."""
    snap = run.snapshots.get(snapshot)
    count = snap.values.get(Key("clients", metric="clients")) if snap else None
    k = snap.values.get(Key("clients", metric="worst10_count")) if snap else None
    rows = [
        (f"mean over {count if count is not None else 'all'} clients", Key("clients", metric="mean")),
        ("std over clients", Key("clients", metric="std")),
        (f"worst-10% mean (lowest {k if k is not None else 'ceil(10%)'})", Key("clients", metric="worst10_mean")),
    ]
    groups = [] if snap is None else [key.client for key in snap.values
                                      if key.section == "clients" and key.client and key.metric == "mean"]
    for group in groups:
        n = snap.values[Key("clients", client=group, metric="clients")]
        rows.append((f"mean over {group} clients ({n})", Key("clients", client=group, metric="mean")))
    return rows


def per_client_tables(report: Report, run: RunReport, snapshot: str) -> list[Table]:
    snap = run.snapshots[snapshot]
    if Key("clients", metric="mean") not in snap.values:
        return [Table(f"per_client.{run.name}.{snapshot}", f"Per-client accuracy · {run.name}", ["note"],
                      [[Cell(f"no predictions/clients-{snapshot}.parquet in this run")]])]
    clients = [k.client for k in snap.values if k.section == "per_client" and k.metric == "accuracy"]
    rows = [
        [Cell(c)] + [metric_cell(m, snap.values.get(Key("per_client", client=c, metric=m)))
                     for m in ("modalities", "samples", "accuracy")]
        for c in clients
    ]
    where = f"predictions/clients-{snapshot}.parquet (round {snap.client_round})"
    detail = Table(f"per_client.{run.name}.{snapshot}",
                   f"Per-client accuracy · {run.name} · {snapshot_title(run, snapshot)}",
                   ["client", "modalities", "samples", "accuracy"], rows,
                   f"The model's accuracy on each client's own training data, recomputed from {where}; "
                   "modalities held by the client, from the partition.")
    stats = Table(f"clients.{run.name}.{snapshot}",
                  f"Accuracy over clients · {run.name} · {SNAPSHOT_LABELS[snapshot]}",
                  ["statistic", "value"],
                  [[Cell(label), metric_cell(key.metric, snap.values.get(key))]
                   for label, key in _client_stat_rows(report, run, snapshot)],
                  "Clients weigh equally; std is the population std; worst-10% mean = mean of the lowest "
                  "ceil(10% of clients) client accuracies.")
    return [detail, stats]


def compact_ids(ids: Sequence[int]) -> str:
    """Client ids ascending, three or more consecutive ones as a range: ``0–2, 5, 7, 8``; "—" for none."""
    ids = sorted(set(ids))
    parts, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[end - 1] + 1:
            block = ids[start:end]
            parts += [f"{block[0]}–{block[-1]}"] if len(block) > 2 else [str(i) for i in block]
            start = end
    return ", ".join(parts) or MISSING


def selection_table(run: RunData) -> Table | None:
    """The client-selection decisions per logged round of a method that selects modalities
    (cmsfed): clients trained, those that trained only each modality, the server's ρ̄; None for
    a run whose metrics carry no ``trained_only``."""
    rounds = run.selection
    if not rounds:
        return None
    rows = [
        [Cell(r.round, "int"), Cell(f"{len(r.clients)} ({compact_ids(r.clients)})" if r.clients else "0")]
        + [Cell(compact_ids(r.trained_only.get(m, []))) for m in run.modalities]
        + [Cell(r.global_imbalance, "num")]
        for r in rounds
    ]
    columns = ["round", "clients trained", *(f"{m} only" for m in run.modalities), "global imbalance ρ̄"]
    first = run.modalities[0] if run.modalities else "the first modality"
    dominant = f"> 1: {first} dominant" if len(run.modalities) <= 2 else "defined for two modalities, — otherwise"
    note = ("Logged each round in metrics.jsonl: the clients whose update was aggregated (count and ids), those of "
            "them that trained only one modality, and the server's global imbalance ρ̄ after the round (mean of "
            f"the clients' imbalance ratios weighted by samples; {dominant}), which picks the "
            "modality the next round's weak-only clients train.")
    return Table(f"selection.{run.name}", f"Client selection · {run.name}", columns, rows, note)


# ----------------------------------------------------------------------------- comparison


def _compare_table(
    report: Report, snapshot: str, key: str, title: str, label_columns: Sequence[str],
    row_specs: Sequence[tuple[list[Cell], Key]], note: str, separators: set[int] | None = None,
) -> Table:
    """Rows = ``row_specs`` (label cells, key); columns = each run's value, then each other run's
    delta to the baseline (other − baseline)."""
    base, others = report.runs[0], report.runs[1:]
    rows = []
    for labels, k in row_specs:
        values = mark_best([metric_cell(k.metric, report.value(run, snapshot, k)) for run in report.runs], k.metric)
        deltas = [delta_cell(k.metric, report.delta(run, snapshot, k)) for run in others]
        rows.append(list(labels) + values + deltas)
    columns = list(label_columns) + [run.name for run in report.runs] + [f"Δ {run.name}" for run in others]
    rounds = ", ".join(
        f"{run.name} r{run.snapshots[snapshot].round}" if snapshot in run.snapshots else f"{run.name}: none"
        for run in report.runs
    )
    note = f"{note} Baseline {base.name}. Rounds: {rounds}. {BEST_NOTE}"
    return Table(key, title, columns, rows, note, separators or set(), len(label_columns))


def compare_tables(report: Report, snapshot: str, per_class: bool, per_client: bool) -> list[Table]:
    label = f"{SNAPSHOT_LABELS[snapshot]} ({'best on validation' if snapshot == 'best' else 'last round'})"
    specs, separators = [], set()
    for path in report.paths:
        for m in TABLE_SUMMARY_METRICS[1:]:
            if not (m == "fused_minus_path" and path == "fused"):
                specs.append(([Cell(path), Cell(METRIC_LABELS[m])], Key("summary", path=path, metric=m)))
        separators.add(len(specs) - 1)
    tables = [_compare_table(report, snapshot, f"compare.summary.{snapshot}", f"Fairness summary · {label}",
                             ["path", "metric"], specs, "Recomputed from each run's predictions.", separators)]
    classes = report.runs[0].run.classes
    if per_class:
        support = [Cell(report.value(report.runs[0], snapshot, Key("per_class", cls=c, metric="support")), "int")
                   for c in classes]
        for path in report.paths:
            specs = [([Cell(c), s], Key("per_class", path=path, cls=c, metric="recall"))
                     for c, s in zip(classes, support)]
            tables.append(_compare_table(report, snapshot, f"compare.per_class.{path}.{snapshot}",
                                         f"Per-class recall · {path} · {label}", ["class", "support"], specs,
                                         "Support from the baseline's test set."))
        if any(Key("per_class", cls=classes[0], metric="temperature") in run.snapshots[snapshot].values
               for run in report.runs if snapshot in run.snapshots):
            specs = [([Cell(c)], Key("per_class", cls=c, metric="temperature")) for c in classes]
            tables.append(_compare_table(report, snapshot, f"compare.temperature.{snapshot}",
                                         f"FedCMI class temperatures · {label}", ["class"], specs,
                                         "Logged during training (metrics.jsonl) at each run's snapshot round."))
    if per_client:
        specs = [([Cell(label_)], k) for label_, k in _client_stat_rows(report, report.runs[0], snapshot)]
        tables.append(_compare_table(report, snapshot, f"compare.clients.{snapshot}",
                                     f"Accuracy over clients · {label}",
                                     ["statistic"], specs, "Group labels from the baseline's partition."))
        partitions = {(run.run.partition_name, run.run.artifact.manifest.get("inputs", {}).get("partition"))
                      for run in report.runs}
        if len(partitions) == 1 and report.runs[0].run.partition_name:
            base = report.runs[0]
            specs = [([Cell(c), Cell(report.value(base, snapshot, Key("per_client", client=c, metric="modalities")))],
                      Key("per_client", client=c, metric="accuracy")) for c in _client_ids(report, snapshot)]
            tables.append(_compare_table(report, snapshot, f"compare.per_client.{snapshot}",
                                         f"Per-client accuracy · {label}", ["client", "modalities"], specs,
                                         "Same partition for every run: client ids match."))
    return tables


# ----------------------------------------------------------------------------- all tables


def build_tables(report: Report, *, per_class: bool, per_client: bool) -> list[Table]:
    """The report's tables in display order: runs, then per snapshot the summary, per-class and
    per-client tables (side by side with deltas in a comparison), then with the per-client
    tables each run's client selection over rounds (a method that selects modalities only)."""
    tables = [runs_table(report)]
    for snapshot in report.snapshots:
        if report.compare:
            tables += compare_tables(report, snapshot, per_class, per_client)
            continue
        for run in report.runs:
            if snapshot not in run.snapshots:
                continue
            tables.append(summary_table(report, run, snapshot))
            if per_class:
                tables.append(per_class_table(report, run, snapshot))
            if per_client:
                tables += per_client_tables(report, run, snapshot)
    if per_client:
        tables += [table for run in report.runs if (table := selection_table(run.run)) is not None]
    return tables


def legend(report: Report) -> str:
    """Units, and in a comparison how deltas read."""
    return f"{UNITS_NOTE} {DELTA_NOTE}" if report.compare else UNITS_NOTE


def report_notes(report: Report) -> list[str]:
    """Every run's notes (INCOMPLETE first), prefixed by the run name."""
    return [f"{run.name}: {note}" for run in report.runs for note in run.run.notes]


@dataclass(frozen=True)
class Document:
    """What every text format shows of a report: a title, notes (INCOMPLETE ones first), the
    units legend and the tables (the first one, the runs or groups, printed before the notes)."""

    title: str
    notes: list[str]
    legend: str
    tables: list[Table]


def report_document(report: Report, *, per_class: bool, per_client: bool) -> Document:
    title = "cmi report: " + " vs ".join(run.name for run in report.runs)
    return Document(title, report_notes(report), legend(report),
                    build_tables(report, per_class=per_class, per_client=per_client))


# ----------------------------------------------------------------------------- rich

#: Okabe–Ito blue / vermillion: a colour-blind-safe pair for better / worse comparison deltas
TONE_COLOURS = {"better": "#0072B2", "worse": "#D55E00"}


def _rich_cell(cell: Cell) -> str:
    text = escape(cell.text)
    if cell.tone:
        text = f"[{TONE_COLOURS[cell.tone]}]{text}[/]"
    return f"[bold]{text}[/]" if cell.bold else text


def to_rich(table: Table) -> RichTable:
    """The table for rich; every user-visible string is escaped (run names may hold ``[...]``)."""
    # at least as wide as the title, so that the title never wraps where there is room
    out = RichTable(title=escape(table.title), title_style="bold", header_style="bold", box=box.SIMPLE_HEAD,
                    min_width=len(table.title) + 2)
    for i, name in enumerate(table.columns):
        numeric = bool(table.rows) and any(row[i].kind != "text" for row in table.rows)
        # row labels never wrap and no value is ever cut; headers may wrap between words
        widest = max([len(word) for word in name.split()] + [len(row[i].text) for row in table.rows])
        out.add_column(escape(name), justify="right" if numeric else "left", no_wrap=i < table.label_columns,
                       min_width=widest)
    for i, row in enumerate(table.rows):
        out.add_row(*(_rich_cell(c) for c in row), end_section=i in table.separators)
    return out


#: narrowest console a document is printed on when output is not a terminal
MIN_WIDTH = 100


def document_width(document: Document) -> int:
    """Characters a console needs to print every table of ``document`` unwrapped and uncut (at
    least :data:`MIN_WIDTH`): the width for output that is not a terminal (a file, a pipe, a CI log)."""
    probe = Console(file=io.StringIO(), width=1_000_000)
    return max([MIN_WIDTH] + [probe.measure(to_rich(t)).maximum for t in document.tables])


def print_document(console: Console, document: Document) -> None:
    """Print the tables (each note dimmed below it), with the notes (INCOMPLETE warnings in a
    yellow panel) and the units legend after the first table."""
    console.print(to_rich(document.tables[0]))
    if document.notes:
        incomplete = any("INCOMPLETE" in n for n in document.notes)
        console.print(Panel(escape("\n".join(document.notes)), title="INCOMPLETE" if incomplete else "notes",
                            border_style="bold yellow" if incomplete else "dim"))
    console.print(escape(document.legend), style="dim")
    for table in document.tables[1:]:
        console.print()
        console.print(to_rich(table))
        if table.note:
            console.print(escape(table.note), style="dim")
