"""`cmi report`: fairness report of one run, or several side by side (`--compare`)."""

from __future__ import annotations

import io
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import Progress

from cmi_cli.common import console, user_errors, workspace
from pipelines.artifacts import atomic_write_text
from pipelines.reports.analysis import build_report
from pipelines.reports.load import SNAPSHOTS
from pipelines.reports.render import FORMATS, default_html_path, render
from pipelines.reports.tables import build_tables, print_report


Format = Enum("Format", {name: name for name in FORMATS}, type=str)
Snapshot = Enum("Snapshot", {name: name for name in ("both", *SNAPSHOTS)}, type=str)


def register(app: typer.Typer) -> None:
    @app.command(
        "report",
        help=(
            "Per-class, per-client and per-modality fairness report of training runs.\n\n"
            "RUN: a run name in the workspace's runs/ or a run directory (default: the latest run).\n\n"
            "Every table number is recomputed from the run's saved test predictions (test-best: the round "
            "best on validation; test-final: the last round) and its partition. Bare `cmi report` prints "
            "the runs and a fairness summary per path (accuracy, balanced accuracy, macro-F1, worst-class "
            "recall, spread of per-class recall, gap to the fused path).\n\n"
            "Examples:\n\n"
            "  cmi report --per-class\n\n"
            "  cmi report --compare FEDAVG_RUN FEDCMI_RUN --format html"
        ),
    )
    @user_errors
    def report_command(
        ctx: typer.Context,
        runs: Optional[List[str]] = typer.Argument(
            None, metavar="[RUN]...",
            help="Runs to report: names in the workspace's runs/ or run directories. Default: the latest run.",
            show_default=False,
        ),
        per_class: bool = typer.Option(
            False, "--per-class",
            help="Add per-class tables: support, recall of every path (fused, <m>_only, <m>_self) and FedCMI's "
                 "class temperature.",
        ),
        per_client: bool = typer.Option(
            False, "--per-client",
            help="Add per-client tables: the model's accuracy on each client's own data with the client's "
                 "modalities, and its mean, std and worst-10% mean over clients.",
        ),
        compare: bool = typer.Option(
            False, "--compare",
            help="Compare the RUNs side by side: the first RUN is the baseline and every delta is "
                 "other run − baseline. With one RUN, it is compared with the latest run.",
        ),
        snapshot: Snapshot = typer.Option(
            Snapshot("both"), "--snapshot", case_sensitive=False,
            help="Which predictions to report: best (round best on validation), final (last round) or both.",
        ),
        path: Optional[List[str]] = typer.Option(
            None, "--path", metavar="PATH",
            help="Only this eval path (repeatable), e.g. --path fused --path audio_only. Default: all paths.",
            show_default=False,
        ),
        fmt: Format = typer.Option(
            Format("table"), "--format", "-f", case_sensitive=False,
            help="table (terminal), json or csv (every number, fractions 0..1), markdown (the terminal's "
                 "tables), html (one self-contained file with figures and every table).",
        ),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o",
            help="Write the report to this file (atomically). Default: table/json/csv/markdown print to "
                 "the terminal; html goes to report.html in the (first) run directory "
                 "(compare-<other runs>.html with several runs).",
            show_default=False,
        ),
    ) -> None:
        snapshots = SNAPSHOTS if snapshot.value == "both" else (snapshot.value,)
        with console.status("reading runs and recomputing metrics…"):
            report = build_report(workspace(ctx), runs or [], compare=compare, snapshots=snapshots, paths=path)
        if fmt.value == "table":
            tables = build_tables(report, per_class=per_class, per_client=per_client)
            if output is None:
                print_report(console, report, tables)
                return
            plain = Console(file=io.StringIO(), width=160, no_color=True, record=True)
            print_report(plain, report, tables)
            _write(output, plain.export_text())
            return
        if fmt.value == "html":
            with Progress(*Progress.get_default_columns(), console=console, transient=True) as bar:
                task = bar.add_task("drawing figures", total=None)
                text = render(report, "html",
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
            _write(output or default_html_path(report), text)
            return
        text = render(report, fmt.value, per_class=per_class, per_client=per_client)
        if output is None:
            typer.echo(text, nl=False)
        else:
            _write(output, text)


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    console.print(f"wrote {path}")
