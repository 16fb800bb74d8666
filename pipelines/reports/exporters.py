"""Machine-readable and shareable text outputs of a report: JSON, CSV and Markdown.

- JSON and CSV always hold every number (summary, per class, per client) of the selected
  snapshots and paths, with deltas to the baseline in a comparison; values are fractions (0..1),
  not percent; NaN (undefined, e.g. recall of a class absent from the test set) is null / empty.
  A run of a method that selects modalities (cmsfed) adds, in JSON only, its client selection per
  logged round (``client_selection``: round, clients, trained_only, global_imbalance).
  An aggregated report's JSON / CSV hold every group statistic and paired difference the same way.
- Markdown renders the same tables as the terminal.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any

from pipelines.reports.aggregate import CONFIDENCE, Aggregate, Paired, Summary
from pipelines.reports.analysis import Key, Report, Value
from pipelines.reports.tables import Cell, Document, Table

REPORT_FORMAT_VERSION = 1
CSV_COLUMNS = ("run", "complete", "snapshot", "round", "section", "path", "class", "client", "metric", "value",
               "delta_vs_baseline")


def _plain(value: Value | None) -> Value | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def nest(values: dict[Key, Any]) -> dict[str, Any]:
    """Flat keys -> the JSON layout: summary[path][metric], per_class[class][metric] (recall per
    path under per_class[class]["recall"][path]), per_client[client][metric], clients[metric]
    (per modality group under clients["groups"][group][metric])."""
    out: dict[str, Any] = {"summary": {}, "per_class": {}, "per_client": {}, "clients": {}}
    for k, v in values.items():
        v = _plain(v)
        if k.section == "summary":
            out["summary"].setdefault(k.path, {})[k.metric] = v
        elif k.section == "per_class" and k.path:
            out["per_class"].setdefault(k.cls, {}).setdefault("recall", {})[k.path] = v
        elif k.section == "per_class":
            out["per_class"].setdefault(k.cls, {})[k.metric] = v
        elif k.section == "per_client":
            out["per_client"].setdefault(k.client, {})[k.metric] = v
        elif k.client:
            out["clients"].setdefault("groups", {}).setdefault(k.client, {})[k.metric] = v
        else:
            out["clients"][k.metric] = v
    return out


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready data (see :func:`nest` for each snapshot's layout)."""
    runs = []
    for run in report.runs:
        r = run.run
        entry: dict[str, Any] = {
            "name": r.name, "path": str(r.artifact.path), "method": r.method, "dataset": r.dataset,
            "partition": r.partition_name, "status": r.status, "complete": r.complete,
            "rounds_done": r.rounds_done, "rounds_total": r.rounds_total, "best_round": r.best_round,
            "classes": r.classes, "modalities": r.modalities, "eval_paths": r.eval_paths, "notes": r.notes,
            "snapshots": {
                s: {"round": snap.round, "file": snap.file, "models": snap.models, "client_round": snap.client_round,
                    **nest(report.values(run, s))}
                for s, snap in run.snapshots.items()
            },
        }
        if selection := r.selection:
            entry["client_selection"] = [dataclasses.asdict(decision) for decision in selection]
        if report.compare and run is not report.baseline:
            entry["delta_vs_baseline"] = {s: nest(report.deltas(run, s)) for s in run.snapshots}
        runs.append(entry)
    return {
        "cmi_report": REPORT_FORMAT_VERSION,
        "compare": report.compare,
        "baseline": report.baseline.name if report.baseline else None,
        "snapshots": list(report.snapshots),
        "paths": report.paths,
        "runs": runs,
    }


def to_json(data: dict[str, Any]) -> str:
    """:func:`report_dict` or :func:`aggregate_dict` data as indented UTF-8 JSON."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_csv(report: Report) -> str:
    """One row per number (tidy/long format, ready for a spreadsheet or pandas pivot)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in report.runs:
        for s, snap in run.snapshots.items():
            deltas = report.deltas(run, s)
            for k, v in report.values(run, s).items():
                v, d = _plain(v), deltas.get(k)
                writer.writerow([run.name, run.run.complete, s, snap.round, k.section, k.path, k.cls, k.client,
                                 k.metric, "" if v is None else v, "" if d is None else d])
    return buffer.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _md_cell(cell: Cell) -> str:
    text = _md_escape(cell.text)
    return f"**{text}**" if cell.bold else text


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table under a ``###`` title (best values bold), its note in
    italics below."""
    numeric = [bool(table.rows) and any(row[i].kind != "text" for row in table.rows) for i in range(len(table.columns))]
    lines = [f"### {_md_escape(table.title)}", ""]
    lines.append("| " + " | ".join(_md_escape(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"*{_md_escape(table.note)}*"]
    return "\n".join(lines)


def to_markdown(document: Document) -> str:
    parts = [f"# {_md_escape(document.title)}", markdown_table(document.tables[0])]
    if document.notes:
        parts.append("\n".join(f"> **{n}**" if "INCOMPLETE" in n else f"> {n}" for n in document.notes))
    parts.append(f"*{document.legend}*")
    parts += [markdown_table(t) for t in document.tables[1:]]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- aggregated reports

AGGREGATE_CSV_COLUMNS = (
    "snapshot", "group", "role", "section", "path", "class", "client", "metric", "n", "mean", "std", "ci95_low",
    "ci95_high", "values", "pairs", "diff_n", "diff_mean", "diff_std", "diff_ci95_low", "diff_ci95_high",
    "differences", "wins", "ties", "losses", "wilcoxon_p", "ttest_rel_p",
)


def _summary_dict(s: Summary) -> dict[str, Any]:
    return {"n": s.n, "mean": _plain(s.mean), "std": _plain(s.std), "ci95": [_plain(s.ci_low), _plain(s.ci_high)],
            "values": [_plain(v) for v in s.values]}


def _paired_dict(p: Paired) -> dict[str, Any]:
    return {"pairs": list(p.pairs), "difference": _summary_dict(p.difference), "wins": p.wins, "ties": p.ties,
            "losses": p.losses, "wilcoxon_p": _plain(p.wilcoxon.p), "wilcoxon_note": p.wilcoxon.note,
            "ttest_rel_p": _plain(p.ttest.p), "ttest_rel_note": p.ttest.note}


def aggregate_dict(agg: Aggregate) -> dict[str, Any]:
    """The aggregated report as JSON-ready data: groups (runs used, runs skipped) and per snapshot
    each group's statistics and paired differences, laid out as :func:`nest` lays out a run's
    numbers; fractions 0..1, NaN as null."""
    return {
        "cmi_report": REPORT_FORMAT_VERSION,
        "kind": "aggregate",
        "title": agg.title,
        "experiment": agg.experiment,
        "group_by": list(agg.group_by),
        "baseline": agg.baseline.label,
        "snapshots": list(agg.snapshots),
        "paths": agg.paths,
        "classes": agg.classes,
        "statistics": {"std_ddof": 1, "confidence": CONFIDENCE, "interval": "Student t",
                       "pairing": "seed and partition", "wilcoxon": "scipy.stats.wilcoxon, two-sided, zeros dropped",
                       "ttest_rel": "scipy.stats.ttest_rel, two-sided"},
        "notes": agg.notes,
        "groups": [{"label": g.label, "methods": g.methods,
                    "runs": [{"name": m.name, "seed": m.seed, "partition": m.partition} for m in g.members],
                    "skipped": [{"name": s.name, "status": s.status} for s in g.skipped]} for g in agg.groups],
        "results": {
            snapshot: {
                "groups": {label: nest({k: _summary_dict(s) for k, s in by_key.items()})
                           for label, by_key in agg.stats[snapshot].items()},
                "vs_baseline": {label: nest({k: _paired_dict(p) for k, p in by_key.items()})
                                for label, by_key in agg.paired[snapshot].items()},
            }
            for snapshot in agg.snapshots
        },
    }


def _cell(value: Any) -> Any:
    value = _plain(value)
    return "" if value is None else value


def aggregate_csv(agg: Aggregate) -> str:
    """One row per snapshot, group and number: its statistics and, for a group other than the
    baseline, the paired differences (per-run values and differences ``;``-separated)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(AGGREGATE_CSV_COLUMNS)
    for snapshot in agg.snapshots:
        for g in agg.groups:
            paired = agg.paired[snapshot].get(g.label, {})
            for k, s in agg.stats[snapshot][g.label].items():
                row = [snapshot, g.label, "baseline" if g is agg.baseline else "", k.section, k.path, k.cls, k.client,
                       k.metric, s.n, _cell(s.mean), _cell(s.std), _cell(s.ci_low), _cell(s.ci_high),
                       ";".join(str(_cell(v)) for v in s.values)]
                p = paired.get(k)
                if p is None:
                    row += [""] * 12
                else:
                    d = p.difference
                    row += [";".join(p.pairs), d.n, _cell(d.mean), _cell(d.std), _cell(d.ci_low), _cell(d.ci_high),
                            ";".join(str(_cell(v)) for v in d.values), _cell(p.wins), _cell(p.ties),
                            _cell(p.losses), _cell(p.wilcoxon.p), _cell(p.ttest.p)]
                writer.writerow(row)
    return buffer.getvalue()
