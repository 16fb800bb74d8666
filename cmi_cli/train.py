"""`cmi train`: federated training (FedCMI and its baselines) on the latest partition."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from cmi_cli.common import console, user_errors, workspace
from pipelines.engines import ENGINES
from pipelines.errors import CmiError

FLOWER_PANEL = "Flower engine (--engine flower)"

HELP = """Train a method (default: FedCMI) on the latest partition and write a run directory.

Settings come from the defaults, then --config FILE.toml, then the options below, then --set
KEY=VALUE (repeatable; any config key, e.g. --set fedcmi.kappa=1.5 or --set model.embed_dim=256).
Running the same command again continues an interrupted run; --resume RUN continues a named one.
"""


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)


@user_errors
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file of settings (see examples/)."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m",
        help="fedcmi (default), fedavg, fedprox, unimodal, centralized or local."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Federated rounds. \\[default: 20]"),
    clients_per_round: Optional[int] = typer.Option(
        None, "--clients-per-round", help="Clients sampled (without replacement) per round. \\[default: 5]"),
    local_epochs: Optional[int] = typer.Option(None, "--local-epochs", help="Local epochs per client update. \\[default: 5]"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Client SGD learning rate. \\[default: 0.02]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Local batch size. \\[default: 8]"),
    eval_every: Optional[int] = typer.Option(
        None, "--eval-every", help="Evaluate every N rounds (the last round always). \\[default: 1]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of sampling, initialisation and shuffling. \\[default: 0]"),
    device: Optional[str] = typer.Option(
        None, "--device", help="auto (CUDA if available), cpu or cuda. \\[default: auto]"),
    encoder: Optional[str] = typer.Option(
        None, "--encoder", help="small (CPU-friendly) or resnet18 (paper-faithful). \\[default: small]"),
    fusion: Optional[str] = typer.Option(None, "--fusion", help="concat, sum, film or gated. \\[default: concat]"),
    engine: Optional[str] = typer.Option(
        None, "--engine", help=f"Training engine: {', '.join(ENGINES)}. \\[default: local]"),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="KEY=VALUE for any config key (repeatable), e.g. fedcmi.kappa=1.5."),
    partition: Optional[str] = typer.Option(
        None, "--partition", "-p", help="Partition name or path. \\[default: the latest]"),
    name: Optional[str] = typer.Option(
        None, "--name", help="Run name. \\[default: <method>-<partition>-s<seed>-<config hash>]"),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue run RUN (name or path) from its last checkpoint, with its saved settings."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run of the same name and start over."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display (for scripts)."),
    superlink: Optional[str] = typer.Option(
        None, "--superlink", rich_help_panel=FLOWER_PANEL,
        help="HOST:PORT of a running SuperLink to train on (see `cmi flower up` and the README). "
        "\\[default: start a loopback deployment for this run]"),
    simulation: bool = typer.Option(
        False, "--simulation", rich_help_panel=FLOWER_PANEL,
        help="Use Flower's simulation runtime (SuperNodes simulated in Ray workers; needs the "
        "cmi[simulation] extra) instead of a loopback deployment of real SuperNode processes."),
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
    from pipelines.engines import get_engine
    from pipelines.training.config import parse_assignment, read_config_file, resolve_config
    from pipelines.training.progress import QuietProgress, RichProgress
    from pipelines.training.session import open_session, resume_session

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
    if resume is not None:
        changed = sorted(set(overrides) - {"device"} | set(assigned)) + (["--config"] if config else [])
        changed += [opt for opt, v in (("--partition", partition), ("--name", name)) if v is not None]
        if changed or force:
            raise CmiError(
                f"--resume continues a run with its saved settings; drop {', '.join(changed) or '--force'} "
                "(only --device and --quiet may be given), or start a new run without --resume."
            )
        session = resume_session(ws, resume, device=device)
        flower_options = _flower_options(session.config.engine, flower)
    else:
        layers = [read_config_file(config)] if config else []
        cfg = resolve_config(*layers, overrides, assigned)
        flower_options = _flower_options(cfg.engine, flower)   # before the run directory exists
        session = open_session(ws, cfg, partition=partition, name=name, force=force)

    cfg = session.config
    if session.finished:
        console.print(f"run [bold]{session.run.name}[/] is already complete ({cfg.rounds} rounds); "
                      f"see it with `cmi report`, or pass --force to train it again.")
        return
    if not quiet:
        where = f"resuming after round {session.rounds_done}" if session.rounds_done else "new run"
        console.print(
            f"[bold]{cfg.method}[/] on partition [bold]{session.data.partition.name}[/] "
            f"({len(session.data.clients)} clients, {len(session.data.train)} train samples) -> "
            f"{session.run.path}  [dim]({where}, device {session.device})[/]"
        )
    shown = [session.selection] + [f"{m}_only" for m in session.data.modalities if f"{m}_only" != session.selection]
    progress = QuietProgress() if quiet else RichProgress(console, shown)
    if cfg.engine == "flower":
        get_engine(cfg.engine)(session, progress, flower_options)
    else:
        get_engine(cfg.engine)(session, progress)
    if not quiet:
        _print_summary(session)


def _flower_options(engine: str, given: dict[str, Any]):
    """The Flower engine's options (a FlowerOptions from those ``given``, unset ones at their
    defaults) for ``--engine flower``; None for another engine, where giving one is an error."""
    given = {key: value for key, value in given.items() if value not in (None, False)}
    if engine == "flower":
        from pipelines.engines.flower.run import FlowerOptions

        return FlowerOptions(**given)
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
    console.print(f"run directory: {session.run.path}\nnext: `cmi report` (per-class and per-client analysis)")
