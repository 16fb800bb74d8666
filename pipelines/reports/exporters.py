"""Machine-readable and shareable text outputs of a report: JSON, CSV and Markdown.

- JSON and CSV always hold every number (summary, per class, per client) of the selected
  snapshots and paths, with deltas to the baseline in a comparison; values are fractions (0..1),
  not percent; NaN (undefined, e.g. recall of a class absent from the test set) is null / empty.
- Markdown renders the same tables as the terminal.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from pipelines.reports.analysis import Key, Report, Value
from pipelines.reports.tables import Table, legend, report_notes

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


def to_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2, ensure_ascii=False) + "\n"


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


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table under a ``###`` title, its note in italics below."""
    numeric = [bool(table.rows) and any(row[i].kind != "text" for row in table.rows) for i in range(len(table.columns))]
    lines = [f"### {_md_escape(table.title)}", ""]
    lines.append("| " + " | ".join(_md_escape(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(_md_escape(c.text) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"*{_md_escape(table.note)}*"]
    return "\n".join(lines)


def to_markdown(report: Report, tables: list[Table]) -> str:
    title = " vs ".join(run.name for run in report.runs)
    parts = [f"# cmi report: {title}", markdown_table(tables[0])]
    notes = report_notes(report)
    if notes:
        parts.append("\n".join(f"> **{n}**" if "INCOMPLETE" in n else f"> {n}" for n in notes))
    parts.append(f"*{legend(report)}*")
    parts += [markdown_table(t) for t in tables[1:]]
    return "\n\n".join(parts) + "\n"
