"""The `cmi` Typer application: global options and the command list."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import pipelines
from pipelines.artifacts import WORKSPACE_ENV

from cmi_cli import experiment, flower, partition, prepare, report, runs, train
from cmi_cli.common import help_without_command

app = typer.Typer(
    name="cmi",
    help=(
        "Balanced multimodal federated learning.\n\n"
        "Stages read the previous stage's output from the workspace:\n\n"
        "  cmi prepare cremad --root DIR     raw dataset -> feature shards\n\n"
        "  cmi partition --alpha 0.5 --missing 0.3   client splits\n\n"
        "  cmi train                         FedCMI federated training\n\n"
        "  cmi report --per-class            per-class / per-client report\n\n"
        "  cmi experiment run FILE --jobs 2  methods x seeds x settings, in parallel\n\n"
        "  cmi runs                          list the runs and their results"
    ),
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cmi {pipelines.__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    workspace: Path = typer.Option(
        Path("cmi-workspace"),
        "--workspace",
        "-w",
        envvar=WORKSPACE_ENV,
        help="Workspace directory holding datasets/, partitions/ and runs/.",
        show_default=True,
    ),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print cmi's version and exit."
    ),
) -> None:
    ctx.obj = {"workspace": workspace}
    help_without_command(ctx)


prepare.register(app)
partition.register(app)
train.register(app)
report.register(app)
experiment.register(app)
runs.register(app)
flower.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
