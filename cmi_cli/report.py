"""`cmi report`: fairness report of one run, several side by side (`--compare`), or runs
aggregated over seeds (`--group-by`, `--experiment`)."""

from __future__ import annotations

import contextlib
import io
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from cmi_cli.common import console, err_console, user_errors, workspace
from pipelines.artifacts import atomic_write_text
from pipelines.errors import CmiError
from pipelines.reports.aggregate import experiment_groups, group_runs
from pipelines.reports.analysis import build_report
from pipelines.reports.figures import build_figures
from pipelines.reports.load import SNAPSHOTS
from pipelines.reports.render import FORMATS, default_html_path, document, headline, render, write_figures
from pipelines.reports.style import FIGURE_FORMATS
from pipelines.reports.tables import document_width, print_document

Format = Enum("Format", {name: name for name in FORMATS}, type=str)
Snapshot = Enum("Snapshot", {name: name for name in ("both", *SNAPSHOTS)}, type=str)
FigureFormat = Enum("FigureFormat", {name: name for name in FIGURE_FORMATS}, type=str)

HELP = (
    "Per-class, per-client and per-modality fairness report of training runs, side by side or "
    "aggregated over seeds.\n\n"
    "RUN: a run name in the workspace's runs/ or a run directory (default: the latest run).\n\n"
    "Every table number is recomputed from the runs' saved test predictions (test-best: the round "
    "best on validation; test-final: the last round) and partitions. Bare `cmi report` prints "
    "the runs and a fairness summary per path (accuracy, balanced accuracy, macro-F1, worst-class "
    "recall, spread of per-class recall, gap to the fused path).\n\n"
    "Aggregated (--group-by KEY or --experiment NAME): per group mean ± std over runs (ddof=1), n, "
    "95% t confidence interval, differences paired by seed and partition against the baseline "
    "group with wins/ties/losses and Wilcoxon and paired t-test p-values; unfinished runs are "
    "skipped and listed.\n\n"
    "Examples:\n\n"
    "  cmi report --per-class\n\n"
    "  cmi report --compare FEDAVG_RUN FEDCMI_RUN --format html\n\n"
    "  cmi report --experiment paper --format latex -o table.tex\n\n"
    "  cmi report RUN1 RUN2 RUN3 RUN4 --group-by method --baseline fedavg\n\n"
    "  cmi report --experiment kappa-sweep --group-by fedcmi.kappa --per-class\n\n"
    "  cmi report --compare A B --figures figs --figure-format pdf\n\n"
    "  cmi report > report.txt     (never cut: files get tables at full width)"
)


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
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
                 "class temperature (aggregated: mean ± std of the recall).",
        ),
        per_client: bool = typer.Option(
            False, "--per-client",
            help="Add per-client tables: the model's accuracy on each client's own data with the client's "
                 "modalities, and its mean, std and worst-10% mean over clients; for a method that selects "
                 "clients (cmsfed), the clients trained each round and those that trained one modality only.",
        ),
        compare: bool = typer.Option(
            False, "--compare",
            help="Compare the RUNs side by side: the first RUN is the baseline and every delta is "
                 "other run − baseline. With one RUN, it is compared with the latest run.",
        ),
        experiment: Optional[str] = typer.Option(
            None, "--experiment", "-e", metavar="NAME",
            help="Aggregate the runs of this experiment (`cmi experiment run`; a name or directory), grouped "
                 "by method and grid overrides (or --group-by).",
            show_default=False,
        ),
        group_by: Optional[List[str]] = typer.Option(
            None, "--group-by", "-g", metavar="KEY",
            help="Aggregate the RUNs over seeds, grouped by this setting (repeatable): method, partition, "
                 "dataset, or a config key such as fedcmi.kappa or train.lr.",
            show_default=False,
        ),
        baseline: Optional[str] = typer.Option(
            None, "--baseline", "-b", metavar="GROUP",
            help="Group the others are compared with in an aggregated report, e.g. fedavg. Default: the "
                 "first group.",
            show_default=False,
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
                 "tables), latex (booktabs tables, mean ± std, best bold), html (one self-contained file with "
                 "vector figures and every table).",
        ),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o",
            help="Write the report to this file (atomically). Default: table/json/csv/markdown/latex print to "
                 "the terminal; html goes to report.html in the (first) run directory "
                 "(compare-<other runs>.html with several runs; the experiment's directory with --experiment).",
            show_default=False,
        ),
        figures: Optional[Path] = typer.Option(
            None, "--figures", metavar="DIR",
            help="Also write every figure of the report to DIR, one file each (see --figure-format).",
            show_default=False,
        ),
        figure_format: Optional[FigureFormat] = typer.Option(
            None, "--figure-format", case_sensitive=False,
            help="File format of the --figures files: svg (default) or pdf (vector, for a paper), or png.",
            show_default=False,
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q",
            help="Print exactly one line: where the report (and figures) went, or with a terminal table a "
                 "one-line summary.",
        ),
    ) -> None:
        aggregated = experiment is not None or bool(group_by)
        _check_options(runs, compare, aggregated, experiment, baseline, fmt.value, output, figures, figure_format,
                       quiet)
        ws = workspace(ctx)
        snapshots = SNAPSHOTS if snapshot.value == "both" else (snapshot.value,)
        busy = contextlib.nullcontext() if quiet else console.status("reading runs and recomputing metrics…")
        with busy:
            if experiment is not None:
                subject = experiment_groups(ws, experiment, group_by or (), baseline=baseline,
                                            snapshots=snapshots, paths=path)
            elif group_by:
                subject = group_runs(ws, runs or [], group_by, baseline=baseline, snapshots=snapshots, paths=path)
            else:
                subject = build_report(ws, runs or [], compare=compare, snapshots=snapshots, paths=path)
        drawn = None
        if figures is not None or fmt.value == "html":
            drawn = _draw(subject, quiet)
        written = []
        data_on_stdout = False  # json/csv/markdown/latex printed: other messages go to stderr
        if fmt.value == "table":
            doc = document(subject, per_class=per_class, per_client=per_client)
            if output is not None:
                plain = Console(file=io.StringIO(), width=document_width(doc), no_color=True, record=True)
                print_document(plain, doc)
                atomic_write_text(output, plain.export_text())
                written.append(str(output))
            elif not quiet:
                out = console if console.is_terminal else Console(width=document_width(doc), highlight=False)
                print_document(out, doc)
        else:
            text = render(subject, fmt.value, per_class=per_class, per_client=per_client, figures=drawn)
            target = output if output is not None or fmt.value != "html" else default_html_path(subject)
            if target is None:
                typer.echo(text, nl=False)
                data_on_stdout = True
            else:
                atomic_write_text(target, text)
                written.append(str(target))
        if figures is not None:
            kind = (figure_format or FigureFormat("svg")).value
            files = write_figures(drawn, figures, kind)
            written.append(f"{len(files)} figures ({kind}) in {figures}")
        if written:
            (err_console if data_on_stdout else console).print(escape("wrote " + "; ".join(written)), soft_wrap=True,
                                                               highlight=False)
        elif quiet:
            typer.echo(headline(subject))


def _check_options(runs, compare, aggregated, experiment, baseline, fmt, output, figures, figure_format,
                   quiet) -> None:
    """Reject option combinations that mean nothing, naming the fix."""
    if aggregated and compare:
        raise CmiError("--compare shows runs one by one and --group-by / --experiment aggregate them over seeds: "
                       "use one or the other.")
    if experiment is not None and runs:
        raise CmiError("--experiment reports the experiment's own runs: give either RUN... or --experiment NAME.")
    if baseline is not None and not aggregated:
        raise CmiError("--baseline names a group of an aggregated report: add --group-by method (or --experiment "
                       "NAME); with --compare the first RUN is the baseline.")
    if figure_format is not None and figures is None:
        raise CmiError("--figure-format sets the format of the figure files: add --figures DIR.")
    if quiet and fmt not in ("table", "html") and output is None:
        raise CmiError(f"--quiet prints one line, not the {fmt} report: add --output FILE to write it.")


def _draw(subject, quiet: bool):
    """The report's figures, with a progress bar unless ``quiet``."""
    if quiet:
        return build_figures(subject)
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as bar:
        task = bar.add_task("drawing figures", total=None)
        return build_figures(subject, lambda done, total: bar.update(task, completed=done, total=total))
