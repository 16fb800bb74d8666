"""Rendering a built report to a file format, and where an HTML report goes by default."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipelines.reports.analysis import Report
from pipelines.reports.exporters import to_csv, to_json, to_markdown
from pipelines.reports.figures import build_figures
from pipelines.reports.html import to_html
from pipelines.reports.tables import build_tables

FORMATS = ("table", "json", "csv", "markdown", "html")
REPORT_HTML = "report.html"


def render(
    report: Report, fmt: str, *, per_class: bool = False, per_client: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """The report as text in ``fmt`` (json, csv, markdown or html).

    ``per_class``/``per_client`` add those tables to Markdown; JSON, CSV and HTML always hold
    every section. ``progress(done, total)`` follows the HTML figures as they are drawn.
    """
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "markdown":
        return to_markdown(report, build_tables(report, per_class=per_class, per_client=per_client))
    if fmt == "html":
        return to_html(report, build_tables(report, per_class=True, per_client=True), build_figures(report, progress))
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def default_html_path(report: Report) -> Path:
    """Where an HTML report goes without --output: ``report.html`` in the (first) run directory;
    with several runs ``compare-<other runs>.html`` (or ``report-<other runs>.html``) there."""
    first = report.runs[0].run.artifact.path
    if len(report.runs) == 1:
        return first / REPORT_HTML
    others = "_".join(run.name for run in report.runs[1:])
    return first / f"{'compare' if report.compare else 'report'}-{others}.html"
