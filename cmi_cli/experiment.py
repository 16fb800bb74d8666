"""`cmi experiment run|status`: methods x seeds x a grid of settings, each cell a normal run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cmi_cli.common import (
    DEVICE_CHOICE, ENGINE_CHOICE, METHOD_CHOICE, console, err_console, help_without_command, print_table,
    user_errors, workspace,
)
from pipelines.errors import CmiError

HELP = """Experiments: every combination of methods, seeds, settings (a grid) and partitions, each a normal run.

An experiment file is a `cmi train --config` file (the settings every cell shares) with an [experiment]
table (name, methods, seeds, partitions) and a [grid] table (config key = list of values); see
examples/experiment-synthetic.toml. Options can say the same, or change a file's values.

Examples:

  cmi experiment run examples/experiment-synthetic.toml --jobs 2
  cmi experiment run -m fedavg -m fedcmi --seeds 0,1,2 --grid fedcmi.kappa=1,2,4 --name kappa --rounds 10
  cmi experiment status synthetic-baselines
  cmi report --experiment synthetic-baselines --format latex
"""

RUN_HELP = """Run every cell of an experiment not yet complete, --jobs at a time.

Each cell is a run named <experiment>-<method>[-<partition>][-<key>=<value>...]-s<seed> (the same on every
run of the experiment): running the experiment again skips finished cells and resumes interrupted ones.
--jobs N worker processes share the CPU cores, each with cores/N torch threads (never more threads than
cores). A failing cell is recorded (`cmi experiment status`) and the others go on.

Examples:

  cmi experiment run examples/experiment-synthetic.toml --jobs 2
  cmi experiment run examples/experiment-synthetic.toml --seeds 0,1,2,3,4      (more seeds; done cells are skipped)
  cmi experiment run -m fedavg -m fedprox --grid fedprox.mu=0.001,0.01,0.1 --name mu-sweep
  cmi experiment run FILE --engine flower                                      (cells on Flower loopback deployments)
"""

experiment_app = typer.Typer(name="experiment", help=HELP, rich_markup_mode="rich")


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")


@experiment_app.callback(invoke_without_command=True)
def experiment_group(ctx: typer.Context) -> None:
    help_without_command(ctx)


@experiment_app.command("run", help=RUN_HELP)
@user_errors
def run(
    ctx: typer.Context,
    file: Optional[Path] = typer.Argument(
        None, help="Experiment file (TOML). \\[default: none: the options say what to run]"),
    name: Optional[str] = typer.Option(
        None, "--name", help="Experiment name. \\[default: the file's name = ..., else the file name without .toml]"),
    methods: Optional[list[str]] = typer.Option(
        None, "--method", "-m", click_type=METHOD_CHOICE, help="A method to run (repeatable); replaces the file's."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2; replace the file's."),
    grid: Optional[list[str]] = typer.Option(
        None, "--grid",
        help="KEY=V1,V2,... (repeatable): a config key and the values to try, e.g. fedcmi.kappa=1,2,4."),
    partitions: Optional[list[str]] = typer.Option(
        None, "--partition", "-p", help="A partition to run on (repeatable). \\[default: the file's, else the latest]"),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="A `cmi train --config` file under the experiment's settings."),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="KEY=VALUE for any config key of every cell (repeatable), e.g. train.lr=0.05."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Rounds of every cell (as --set rounds=N)."),
    engine: Optional[str] = typer.Option(
        None, "--engine", click_type=ENGINE_CHOICE, help="Engine of every cell (as --set engine=NAME)."),
    device: Optional[str] = typer.Option(
        None, "--device", click_type=DEVICE_CHOICE, help="Device of every cell (as --set device=NAME)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Cells trained at once, in as many processes."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="Torch threads of all the jobs together, split evenly among them. "
        "\\[default: CMI_THREADS, else the CPU cores this process may use]"),
    force: bool = typer.Option(False, "--force", help="Train every cell again from scratch (deletes their runs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No display: print one line, the experiment directory."),
) -> None:
    from pipelines.experiments.display import GridDisplay
    from pipelines.experiments.runner import NoDisplay, run_experiment
    from pipelines.experiments.spec import build_spec
    from pipelines.training.config import parse_assignment
    from pipelines.training.threads import available_cores, competing_load, resolve_threads, split_cores

    if file is None and not (methods or grid or seeds or config):
        raise CmiError("say what to run: an experiment file (see examples/experiment-synthetic.toml), or options "
                       "such as --method fedavg --method fedcmi --seeds 0,1,2.")
    assigned: dict[str, Any] = dict(parse_assignment(s) for s in settings or [])
    assigned.update({k: v for k, v in (("rounds", rounds), ("engine", engine), ("device", device)) if v is not None})
    spec = build_spec(file, name=name, methods=methods or (), seeds=_seeds(seeds), partitions=partitions or (),
                      grid=grid or (), config=config, settings=assigned)
    ws = workspace(ctx)
    cores = resolve_threads(threads)
    workers, per_job = split_cores(jobs, cores)
    if workers < jobs:
        err_console.print(f"[yellow]warning:[/] --jobs {jobs} on {cores} thread(s): running {workers} at a time, "
                          "so that the trainings' threads do not outnumber the cores.")
    warning = competing_load(workers * per_job, available_cores())
    if warning:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if not quiet:
        where = ws.artifact_dir("experiment", spec.name)
        console.print(f"experiment [bold]{escape(spec.name)}[/] -> {escape(str(where))}")
    experiment = run_experiment(ws, spec, jobs=jobs, cores=cores, force=force,
                                display=NoDisplay() if quiet else GridDisplay(console))
    if quiet:
        typer.echo(str(experiment.path))
    else:
        print_table(_cells_table(experiment))
    unfinished = [c for c in experiment.cells if c.status != "complete"]
    if unfinished:
        names = ", ".join(c.run for c in unfinished[:3]) + (", ..." if len(unfinished) > 3 else "")
        raise CmiError(
            f"{len(unfinished)} of {len(experiment.cells)} cell(s) did not complete ({names}); their errors: "
            f"`cmi experiment status {experiment.name}`, their "
            f"output: {experiment.path / 'logs'}. Fix the cause and run the same command again: complete cells are "
            "skipped, the others resume.")
    if not quiet:
        console.print(f"next: `cmi report --experiment {escape(experiment.name)}` (mean ± std over seeds)")


@experiment_app.command("status")
@user_errors
def status(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="Experiment name or directory. \\[default: the latest]"),
) -> None:
    """Show an experiment's cells: status, rounds, best round and test accuracy there, and errors.

    Examples:

      cmi experiment status
      cmi experiment status synthetic-baselines
    """
    from pipelines.experiments import load_experiment

    experiment = load_experiment(workspace(ctx), name)
    counts = ", ".join(f"{n} {s}" for s, n in experiment.counts().items() if n)
    console.print(f"experiment [bold]{escape(experiment.name)}[/]: {experiment.status} ({counts}) · {experiment.path}")
    print_table(_cells_table(experiment))
    for cell in experiment.cells:
        if cell.error and cell.status != "complete":
            console.print(f"[red]{escape(cell.run)}[/]: {escape(cell.error)}")


def _cells_table(experiment) -> Table:
    """The cells of ``experiment`` with what their runs say now."""
    from pipelines.experiments.runs import summarize_run

    several = len(experiment.partitions) > 1
    grid_keys = list(experiment.grid)
    table = Table(title=f"experiment {escape(experiment.name)}", title_justify="left")
    for column in ["run", "method", *(["partition"] if several else []), *grid_keys, "seed", "status", "rounds",
                   "best", "test fused"]:
        numeric = column in ("seed", "rounds", "best", "test fused")
        table.add_column(escape(column), justify="right" if numeric else "left")
    for cell in experiment.cells:
        summary = summarize_run(experiment.run_path(cell))
        rounds = f"{summary.rounds_done}/{summary.rounds_total}" if summary else "-"
        best = str(summary.best_round) if summary and summary.best_round is not None else "-"
        fused = summary.accuracy.get("fused") if summary else None
        table.add_row(escape(cell.run), cell.method, *([escape(cell.partition)] if several else []),
                      *(escape(str(cell.overrides.get(k, "-"))) for k in grid_keys), str(cell.seed), cell.status,
                      rounds, best, f"{fused:.3f}" if fused is not None else "-")
    return table


def _seeds(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CmiError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}.") from None
