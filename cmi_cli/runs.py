"""`cmi runs`: the workspace's runs, what they are and how far they got."""

from __future__ import annotations

import csv
import io
import json
from typing import Optional

import click
import typer
from rich.markup import escape
from rich.table import Table

from cmi_cli.common import METHOD_CHOICE, console, print_table, user_errors, workspace
from pipelines.experiments import load_experiment
from pipelines.experiments.runs import RUN_LIST_STATUSES, list_runs

HELP = """List the runs: name, method, partition, seed, status, rounds done of all, the best round on
validation and the test accuracy of every path there.

A run whose training process is gone before it finished reads "interrupted" (`cmi train --resume RUN`
continues it). Filters combine; each may be repeated.

Examples:

  cmi runs
  cmi runs --method fedcmi --status complete
  cmi runs --experiment synthetic-baselines --format csv > runs.csv
  cmi runs --format json | jq '.[] | select(.status == "failed") | .name'
"""

FORMATS = ("table", "json", "csv")


def register(app: typer.Typer) -> None:
    app.command("runs", help=HELP)(runs)


@user_errors
def runs(
    ctx: typer.Context,
    methods: Optional[list[str]] = typer.Option(None, "--method", "-m", click_type=METHOD_CHOICE,
                                                help="Only runs of this method (repeatable)."),
    partitions: Optional[list[str]] = typer.Option(None, "--partition", "-p",
                                                   help="Only runs on this partition (repeatable)."),
    statuses: Optional[list[str]] = typer.Option(None, "--status", click_type=click.Choice(RUN_LIST_STATUSES),
                                                 help="Only runs with this status (repeatable)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e",
                                             help="Only the runs of this experiment, in its order."),
    fmt: str = typer.Option("table", "--format", "-f", click_type=click.Choice(FORMATS),
                            help="Output format. \\[default: table]"),
) -> None:
    ws = workspace(ctx)
    names = [c.run for c in load_experiment(ws, experiment).cells] if experiment else None
    found = list_runs(ws, methods=methods or (), partitions=partitions or (), statuses=statuses or (), names=names)
    paths = list(dict.fromkeys(p for s in found for p in s.paths))
    if fmt == "json":
        typer.echo(json.dumps([s.to_dict() for s in found], indent=2))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        columns = ["name", "method", "dataset", "partition", "seed", "engine", "status", "rounds_done",
                   "rounds_total", "best_round"]
        writer.writerow(columns + [f"accuracy.{p}" for p in paths])
        for s in found:
            row = s.to_dict()
            writer.writerow([_csv(row[c]) for c in columns] + [_csv(s.accuracy.get(p)) for p in paths])
        typer.echo(out.getvalue(), nl=False)
    elif not found:
        console.print(f"no runs{' match' if methods or partitions or statuses or names else ''} in workspace "
                      f"{escape(str(ws.root))}; `cmi train` makes one.")
    else:
        table = Table(title=f"runs in {escape(str(ws.kind_dir('run')))} (test accuracy at the best round)",
                      title_justify="left")
        for column in ("run", "method", "partition", "seed", "status", "rounds", "best", *paths):
            table.add_column(escape(column), justify="left" if column in ("run", "method", "partition", "status")
                             else "right")
        for s in found:
            table.add_row(escape(s.name), s.method, escape(s.partition), _text(s.seed), _status(s.status),
                          f"{s.rounds_done}/{_text(s.rounds_total)}", _text(s.best_round),
                          *(f"{s.accuracy[p]:.3f}" if s.accuracy.get(p) is not None else "-" for p in paths))
        print_table(table)


def _text(value) -> str:
    return "-" if value is None else str(value)


def _csv(value) -> str:
    return "" if value is None else str(value)


def _status(status: str) -> str:
    style = {"complete": "green", "failed": "red", "diverged": "red", "interrupted": "yellow"}.get(status)
    return f"[{style}]{status}[/]" if style else status
