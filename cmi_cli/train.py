"""`cmi train`: federated training (FedCMI and its baselines) on the latest partition."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional

import click
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from cmi_cli.common import (
    DEVICE_CHOICE, ENGINE_CHOICE, METHOD_CHOICE, RegistryChoice, console, err_console, user_errors, workspace,
)
from pipelines.errors import CmiError

FLOWER_PANEL = "Flower engine (--engine flower)"
RUN_PANEL = "Output and resources"

HELP = """Train a method (default: FedCMI) on the latest partition and write a run directory.

Settings come from the defaults, then --config FILE (a TOML file, or a run's config.toml / config.json), then
the options below, then --set KEY=VALUE (repeatable; any config key, e.g. --set fedcmi.kappa=1.5 or
--set model.embed_dim=256). Running the same command again continues an interrupted run; --resume RUN
continues a named one. Every run directory holds a config.toml that repeats the run.

Examples:

  cmi train                                          FedCMI, defaults, latest partition
  cmi train --method fedavg --rounds 50 --seed 1
  cmi train --config examples/cremad-cpu-quick.toml --set fedcmi.kappa=1.5
  cmi train --config cmi-workspace/runs/RUN/config.toml --name RUN-again     the same run again
  cmi train --resume RUN                             continue an interrupted run
  cmi train --threads 1 --log tensorboard            one torch thread; TensorBoard event files too
  cmi train --engine flower --supernodes 2           on a Flower loopback deployment
  RUN_DIR=$(cmi train --quiet)                       one line: the run directory
"""

_DEFAULT = re.compile(r"\{default:([\w.]+)\}")


class _ConfigDefaultsCommand(TyperCommand):
    """Shows the configuration's real defaults in the help: ``{default:KEY}`` in an option's
    help text becomes ``[default: VALUE]`` of the resolved default config (read when the help
    is shown, so the text never drifts from the defaults and `cmi` starts without torch)."""

    def format_help(self, ctx, formatter):
        from pipelines.training.config import flatten, resolve_config

        defaults = flatten(resolve_config().to_dict())
        for param in self.params:
            if getattr(param, "help", None):
                param.help = _DEFAULT.sub(lambda m: f"\\[default: {defaults[m.group(1)]}]", param.help)
        return super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP, cls=_ConfigDefaultsCommand)(train)


def _encoders() -> Iterable[str]:
    from pipelines.models import ENCODERS

    return ENCODERS


def _fusions() -> Iterable[str]:
    from pipelines.models import FUSIONS

    return FUSIONS


@user_errors
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Settings file: TOML (see examples/), or a run's config.toml or config.json."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", click_type=METHOD_CHOICE, help="Federated method. {default:method}"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Federated rounds. {default:rounds}"),
    clients_per_round: Optional[int] = typer.Option(
        None, "--clients-per-round",
        help="Clients sampled (without replacement) per round. {default:clients_per_round}"),
    local_epochs: Optional[int] = typer.Option(
        None, "--local-epochs", help="Local epochs per client update. {default:train.local_epochs}"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Client SGD learning rate. {default:train.lr}"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Local batch size. {default:train.batch_size}"),
    eval_every: Optional[int] = typer.Option(
        None, "--eval-every", help="Evaluate every N rounds (the last round always). {default:eval_every}"),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed of sampling, initialisation and shuffling. {default:seed}"),
    device: Optional[str] = typer.Option(
        None, "--device", click_type=DEVICE_CHOICE, help="auto = CUDA if available, else CPU. {default:device}"),
    encoder: Optional[str] = typer.Option(
        None, "--encoder", click_type=RegistryChoice(_encoders),
        help="small (CPU-friendly) or resnet18 (paper-faithful). {default:model.encoder}"),
    fusion: Optional[str] = typer.Option(
        None, "--fusion", click_type=RegistryChoice(_fusions), help="Fusion head. {default:model.fusion}"),
    engine: Optional[str] = typer.Option(
        None, "--engine", click_type=ENGINE_CHOICE, help="Training engine. {default:engine}"),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="KEY=VALUE for any config key (repeatable), e.g. fedcmi.kappa=1.5."),
    partition: Optional[str] = typer.Option(
        None, "--partition", "-p", help="Partition name or path. \\[default: the --config file's, else the latest]"),
    name: Optional[str] = typer.Option(
        None, "--name", help="Run name. \\[default: <method>-<dataset>-s<seed>-<settings hash>]"),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue run RUN (name or path) from its last checkpoint, with its saved settings."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run of the same name and start over."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, rich_help_panel=RUN_PANEL,
        help="Torch threads (also env CMI_THREADS); the numbers depend slightly on it. "
        "\\[default: the CPU cores this process may use; a resumed run: its own]"),
    log: Optional[str] = typer.Option(
        None, "--log", click_type=click.Choice(["tensorboard"]), rich_help_panel=RUN_PANEL,
        help="Also write the metrics as TensorBoard event files into RUN/tensorboard/ (needs the "
        "cmi\\[tensorboard] extra). metrics.jsonl and metrics.csv are always written."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", rich_help_panel=RUN_PANEL,
        help="No progress display: print one line, the run directory (for scripts)."),
    superlink: Optional[str] = typer.Option(
        None, "--superlink", rich_help_panel=FLOWER_PANEL,
        help="HOST:PORT of a running SuperLink to train on (see `cmi flower up` and the README). "
        "\\[default: start a loopback deployment for this run]"),
    simulation: bool = typer.Option(
        False, "--simulation", rich_help_panel=FLOWER_PANEL,
        help="Use Flower's simulation runtime (SuperNodes simulated in Ray workers; needs the "
        "cmi\\[simulation] extra) instead of a loopback deployment of real SuperNode processes."),
    supernodes: Optional[int] = typer.Option(
        None, "--supernodes", min=1, rich_help_panel=FLOWER_PANEL,
        help="SuperNodes of the run's own loopback deployment or simulation. "
        "\\[default: CPU cores, at most one per client]"),
    root_certificates: Optional[Path] = typer.Option(
        None, "--root-certificates", exists=True, dir_okay=False, rich_help_panel=FLOWER_PANEL,
        help="PEM CA certificate of a TLS SuperLink (--superlink). \\[default: plaintext]"),
    min_clients: Optional[int] = typer.Option(
        None, "--min-clients", min=1, rich_help_panel=FLOWER_PANEL,
        help="Fewest client updates a round needs; fewer stops the run (resumable with --resume). \\[default: 1]"),
    round_timeout: Optional[float] = typer.Option(
        None, "--round-timeout", min=1.0, rich_help_panel=FLOWER_PANEL,
        help="Seconds a round waits for its clients; those that have not replied count as failed. "
        "\\[default: 3600]"),
    nodes_timeout: Optional[float] = typer.Option(
        None, "--nodes-timeout", min=1.0, rich_help_panel=FLOWER_PANEL,
        help="Seconds to wait at the start for the SuperNodes to come online. \\[default: 120]"),
) -> None:
    from pipelines.training.config import parse_assignment, read_config_file, resolve_config, split_location
    from pipelines.training.progress import (
        TENSORBOARD_DIR, FanOut, QuietProgress, RichProgress, TensorBoardLog, require_tensorboard,
    )
    from pipelines.training.session import open_session, resume_session, run_engine
    from pipelines.training.threads import available_cores, competing_load, resolve_threads

    ws = workspace(ctx)
    flower = {"superlink": superlink, "simulation": simulation, "supernodes": supernodes,
              "root_certificates": root_certificates, "min_clients": min_clients, "round_timeout": round_timeout,
              "nodes_timeout": nodes_timeout}
    overrides: dict[str, Any] = {
        "method": method, "rounds": rounds, "clients_per_round": clients_per_round, "eval_every": eval_every,
        "seed": seed, "device": device, "engine": engine, "train.local_epochs": local_epochs, "train.lr": lr,
        "train.batch_size": batch_size, "model.encoder": encoder, "model.fusion": fusion,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    assigned = dict(parse_assignment(s) for s in settings or [])
    if log:
        require_tensorboard()
    if resume is not None:
        changed = sorted(set(overrides) - {"device"} | set(assigned)) + (["--config"] if config else [])
        changed += [opt for opt, v in (("--partition", partition), ("--name", name)) if v is not None]
        if changed or force:
            raise CmiError(
                f"--resume continues a run with its saved settings; drop {', '.join(changed) or '--force'} "
                "(only --device, --threads, --log and --quiet may be given), or start a new run without --resume."
            )
        session = resume_session(ws, resume, device=device)
        flower_options = _flower_options(session.config.engine, flower)
    else:
        file_settings, location = split_location(read_config_file(config) if config else {})
        cfg = resolve_config(file_settings, overrides, assigned)
        flower_options = _flower_options(cfg.engine, flower)   # its checks come before the run directory exists
        session = open_session(ws, cfg, partition=partition or location.get("partition"), name=name, force=force,
                               dataset=None if partition else location.get("dataset"))

    cfg = session.config
    if session.finished:
        if quiet:
            typer.echo(str(session.run.path))
        else:
            console.print(f"run [bold]{escape(session.run.name)}[/] is already complete ({cfg.rounds} rounds); "
                          f"see it with `cmi report`, or pass --force to train it again.")
        return
    n_threads = resolve_threads(threads, default=session.recorded_threads)
    warning = competing_load(n_threads, available_cores())
    if warning:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if not quiet:
        where = f"resuming after round {session.rounds_done}" if session.rounds_done else "new run"
        console.print(
            f"[bold]{cfg.method}[/] on partition [bold]{escape(session.data.partition.name)}[/] "
            f"({len(session.data.clients)} clients, {len(session.data.train)} train samples) -> "
            f"{escape(str(session.run.path))}  [dim]({where}, device {session.device}, {n_threads} thread(s))[/]"
        )
    shown = [session.selection] + [f"{m}_only" for m in session.data.modalities if f"{m}_only" != session.selection]
    progress = QuietProgress() if quiet else RichProgress(console, shown)
    if log:
        progress = FanOut(progress, TensorBoardLog(session.run.path / TENSORBOARD_DIR, session.data.classes))
    run_engine(session, progress, threads=n_threads, flower_options=flower_options)
    if quiet:
        typer.echo(str(session.run.path))
    else:
        _print_summary(session)


def _flower_options(engine: str, given: dict[str, Any]):
    """The Flower engine's options (a FlowerOptions from those ``given``, unset ones at their
    defaults) for ``--engine flower``, checked (the simulation runtime needs Ray); None for
    another engine, where giving one is an error."""
    given = {key: value for key, value in given.items() if value not in (None, False)}
    if engine == "flower":
        from pipelines.engines.flower.run import FlowerOptions, check_simulation_runtime

        options = FlowerOptions(**given)
        if options.simulation:
            check_simulation_runtime(options)
        return options
    if given:
        options = ", ".join(f"--{key.replace('_', '-')}" for key in given)
        raise CmiError(f"{options} only apply to --engine flower; add --engine flower or drop them.")
    return None


def _print_summary(session) -> None:
    metrics = session.run.read_metrics()
    if not metrics:
        return
    by_round = {m["round"]: m for m in metrics}
    table = Table(title=f"test accuracy (best: round {session.best_round} on validation)", title_justify="left")
    table.add_column("model")
    for path in session.eval_paths:
        table.add_column(path, justify="right")
    rows = [("final", by_round.get(session.rounds_done)), ("best", by_round.get(session.best_round))]
    for label, line in rows:
        if line and line.get("test"):
            acc = line["test"]["accuracy"]
            table.add_row(label, *(f"{acc[p]:.3f}" if acc.get(p) is not None else "-" for p in session.eval_paths))
    console.print(table)
    console.print(f"run directory: {escape(str(session.run.path))}\n"
                  "next: `cmi report` (per-class and per-client analysis)")
