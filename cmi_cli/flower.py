"""`cmi flower up|down|status`: a Flower deployment on this machine (loopback only) for trying
`cmi train --engine flower --superlink ADDRESS` against long-running SuperLink/SuperNodes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cmi_cli.common import console, help_without_command, user_errors, workspace
from pipelines.errors import CmiError

DEFAULT_PORT = 9093

flower_app = typer.Typer(
    name="flower",
    help=(
        "A Flower SuperLink and SuperNodes on this machine (127.0.0.1), started in the background, for "
        "`cmi train --engine flower --superlink 127.0.0.1:PORT`. (Without --superlink, `cmi train --engine "
        "flower` starts and stops its own deployment.) Several machines: see the README.\n\n"
        "Examples:\n\n"
        "  cmi flower up --supernodes 3          SuperLink on 127.0.0.1:9093 + 3 SuperNodes\n"
        "  cmi train --engine flower --superlink 127.0.0.1:9093\n"
        "  cmi flower status                     SuperNodes online, runs\n"
        "  cmi flower down                       stop them all"
    ),
    rich_markup_mode="rich",
)


@flower_app.callback(invoke_without_command=True)
def flower_group(ctx: typer.Context) -> None:
    help_without_command(ctx)


def register(app: typer.Typer) -> None:
    app.add_typer(flower_app, name="flower")


def _home(ctx: typer.Context, home: Optional[Path]) -> Path:
    return (home or workspace(ctx).root / "flower").resolve()


HOME_OPTION = typer.Option(
    None, "--home", help="Folder of the deployment's logs, Flower config and state. \\[default: WORKSPACE/flower]")


@flower_app.command("up")
@user_errors
def up(
    ctx: typer.Context,
    supernodes: int = typer.Option(
        2, "--supernodes", "-n", min=1,
        help="SuperNodes to start (partition-id 0..N-1; they share this workspace, so each round's clients "
        "are spread over them by size)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="SuperLink port on 127.0.0.1 (all its APIs)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="Torch threads of each SuperNode's ClientApp. \\[default: CPU cores / N]"),
    home: Optional[Path] = HOME_OPTION,
) -> None:
    """Start a SuperLink and N SuperNodes in the background and wait until the nodes are online."""
    from pipelines.engines.flower.deployment import STATE_FILE, LoopbackDeployment, default_threads

    root = _home(ctx, home)
    if (root / STATE_FILE).is_file() and LoopbackDeployment.attach(root).superlink.alive():
        raise CmiError(f"a deployment recorded in {root} is running; stop it with `cmi flower down` first.")
    ws = workspace(ctx)
    deployment = LoopbackDeployment(root, supernodes, port=port, node_extra={
        "workspace": str(ws.root), "threads": threads or default_threads(supernodes),
        "any-client": True})
    with console.status(f"starting a SuperLink and {supernodes} SuperNode(s)..."):
        deployment.start(wait_nodes=True)
    console.print(f"[green]SuperLink[/] at [bold]{deployment.address}[/] with {supernodes} SuperNode(s) online; "
                  f"logs in {deployment.logs}")
    console.print(f"train on it:  cmi train --engine flower --superlink {deployment.address}\n"
                  "stop it:      cmi flower down")


@flower_app.command("down")
@user_errors
def down(ctx: typer.Context, home: Optional[Path] = HOME_OPTION) -> None:
    """Stop the deployment started by `cmi flower up` (SuperNodes first, then the SuperLink)."""
    from pipelines.engines.flower.deployment import LoopbackDeployment

    deployment = LoopbackDeployment.attach(_home(ctx, home))
    with console.status("stopping the SuperNodes and the SuperLink..."):
        deployment.stop()
    console.print(f"stopped the deployment at {deployment.address}; no Flower process of it is left.")


@flower_app.command("status")
@user_errors
def status(ctx: typer.Context, home: Optional[Path] = HOME_OPTION) -> None:
    """Show the SuperNodes online and the runs of the deployment started by `cmi flower up`."""
    from pipelines.engines.flower.deployment import CONNECTION, LoopbackDeployment

    deployment = LoopbackDeployment.attach(_home(ctx, home))
    if not deployment.superlink.alive():
        raise CmiError(f"the SuperLink recorded in {deployment.home} is not running; `cmi flower down` cleans up, "
                       "`cmi flower up` starts a new deployment.")
    nodes = deployment.control.online_nodes()
    console.print(f"SuperLink {deployment.address}: {len(nodes)} of {deployment.supernodes} SuperNode(s) online")
    runs = deployment.control.flwr_json("list", CONNECTION).get("runs", [])
    if runs:
        table = Table("run id", "status", "elapsed (s)", title="Flower runs", title_justify="left")
        for info in runs:
            table.add_row(str(info["run-id"]), str(info["status"]), f"{float(info.get('elapsed') or 0):.0f}")
        console.print(table)
