"""Rendering a built report (one run, a comparison, or an aggregated report) to a file format,
writing its figures as files, and where an HTML report goes by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from pipelines.artifacts import atomic_write_bytes
from pipelines.reports.aggregate import Aggregate
from pipelines.reports.aggregate_tables import aggregate_document
from pipelines.reports.analysis import Key, Report
from pipelines.reports.exporters import aggregate_csv, aggregate_dict, report_dict, to_csv, to_json, to_markdown
from pipelines.reports.figures import Figure, build_figures
from pipelines.reports.html import to_html
from pipelines.reports.latex import to_latex
from pipelines.reports.load import SNAPSHOT_LABELS
from pipelines.reports.tables import Cell, Document, report_document

FORMATS = ("table", "json", "csv", "markdown", "latex", "html")
REPORT_HTML = "report.html"


def document(subject: Report | Aggregate, *, per_class: bool, per_client: bool) -> Document:
    """The title, notes, legend and tables every text format shows of ``subject``."""
    if isinstance(subject, Aggregate):
        return aggregate_document(subject, per_class=per_class, per_client=per_client)
    return report_document(subject, per_class=per_class, per_client=per_client)


def render(
    subject: Report | Aggregate, fmt: str, *, per_class: bool = False, per_client: bool = False,
    progress: Callable[[int, int], None] | None = None, figures: list[Figure] | None = None,
) -> str:
    """``subject`` as text in ``fmt`` (json, csv, markdown, latex or html).

    ``per_class``/``per_client`` add those tables to Markdown and LaTeX; JSON, CSV and HTML always
    hold every section. HTML embeds ``figures`` (default: :func:`build_figures`, with
    ``progress(done, total)`` called as they are drawn).
    """
    aggregated = isinstance(subject, Aggregate)
    if fmt == "json":
        return to_json(aggregate_dict(subject) if aggregated else report_dict(subject))
    if fmt == "csv":
        return aggregate_csv(subject) if aggregated else to_csv(subject)
    if fmt == "markdown":
        return to_markdown(document(subject, per_class=per_class, per_client=per_client))
    if fmt == "latex":
        return to_latex(document(subject, per_class=per_class, per_client=per_client))
    if fmt == "html":
        drawn = figures if figures is not None else build_figures(subject, progress)
        return to_html(document(subject, per_class=True, per_client=True), drawn)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def headline(subject: Report | Aggregate) -> str:
    """One line summing ``subject`` up (``--quiet``): the first selected path's accuracy per run
    (or per group, mean ± std over its runs) on the first snapshot it has."""
    path = subject.paths[0] if subject.paths else None
    key = Key("summary", path=path or "", metric="accuracy")
    if isinstance(subject, Aggregate):
        if path is None:
            return f"{subject.title}: no finished run to aggregate yet"
        snapshot = subject.snapshots[0]
        parts = []
        for g in subject.groups:
            s = subject.summary(snapshot, g, key)
            shown = Cell(s.mean, "pct", spread=s.std).text if s else "—"
            parts.append(f"{g.label}: {shown}% (n={len(g.members)})")
        return f"{path} accuracy, {SNAPSHOT_LABELS[snapshot]}, mean ± std over runs · " + " · ".join(parts)
    parts = []
    for run in subject.runs:
        snapshot = next((s for s in subject.snapshots if s in run.snapshots), None)
        if snapshot is None or path is None:
            parts.append(f"{run.name}: no predictions yet")
            continue
        acc = Cell(subject.value(run, snapshot, key), "pct").text
        parts.append(f"{run.name}: {path} accuracy {acc}% ({SNAPSHOT_LABELS[snapshot]}, round "
                     f"{run.snapshots[snapshot].round})")
    return " · ".join(parts)


def figure_file(directory: Path, figure: Figure, fmt: str) -> Path:
    """``<directory>/<figure key>.<fmt>``, the key made a safe file name."""
    return directory / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', figure.key)}.{fmt}"


def write_figures(figures: list[Figure], directory: Path, fmt: str) -> list[Path]:
    """Write every figure to ``directory`` (created) as ``fmt`` (png, svg or pdf), atomically;
    returns the files in figure order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for figure in figures:
        path = figure_file(directory, figure, fmt)
        atomic_write_bytes(path, figure.render(fmt))
        paths.append(path)
    return paths


def default_html_path(subject: Report | Aggregate) -> Path:
    """Where an HTML report goes without --output: ``report.html`` in the (first) run directory;
    with several runs ``compare-<other runs>.html`` (or ``report-<other runs>.html``) there; an
    aggregated report's :attr:`Aggregate.html_path` (``report.html`` in the experiment)."""
    if isinstance(subject, Aggregate):
        return subject.html_path
    first = subject.runs[0].run.artifact.path
    if len(subject.runs) == 1:
        return first / REPORT_HTML
    others = "_".join(run.name for run in subject.runs[1:])
    return first / f"{'compare' if subject.compare else 'report'}-{others}.html"
