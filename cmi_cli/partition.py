"""`cmi partition`: split a prepared dataset's training samples over federated clients."""

from __future__ import annotations

from enum import Enum
from typing import Any, List, Optional

import typer
from rich.table import Table

from cmi_cli.common import console, user_errors, workspace
from pipelines.artifacts import PARTITION_HEATMAP
from pipelines.partitioning import PartitionOutcome, PartitionSettings, run_partition
from pipelines.partitioning.natural import GROUP_ALIASES
from pipelines.partitioning.stage import DEFAULT_ALPHA, DEFAULT_CLIENTS, DEFAULT_MIN_SAMPLES

#: beyond this many clients the summary table shows the first and last ones only
TABLE_ROWS = 30


class MissingLevel(str, Enum):
    client = "client"
    sample = "sample"


def partition(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help="Dataset to partition (name in the workspace or path). Default: the latest prepared one."
    ),
    alpha: Optional[float] = typer.Option(
        None, "--alpha", "-a",
        help=f"Per-class Dirichlet(alpha) label skew with the literature's balancing cap: small (0.1) = strong "
        f"skew, large (100) = near IID, inf = IID. This is the default strategy, with alpha {DEFAULT_ALPHA}.",
    ),
    iid: bool = typer.Option(False, "--iid", help="Uniform random split instead (client sizes differ by at most 1)."),
    by: Optional[str] = typer.Option(
        None, "--by", metavar=f"[{'|'.join(GROUP_ALIASES)}]",
        help="Natural split instead: one client per group of the dataset's group column ('group'; 'actor' and "
        "'event' are aliases: the CREMA-D actor, the AVE / CrisisMMD event). With --clients N below the number "
        "of groups, groups are merged into N size-balanced clients (seeded); a group is never split.",
    ),
    clients: Optional[int] = typer.Option(
        None, "--clients", "-k",
        help=f"Number of clients. Default: {DEFAULT_CLIENTS}; with --by, one client per group.",
    ),
    min_samples: int = typer.Option(
        DEFAULT_MIN_SAMPLES, "--min-samples",
        help="Fewest training samples a client may get; Dirichlet draws are retried (100 times) until it holds.",
    ),
    missing: float = typer.Option(
        0.0, "--missing", "-m",
        help="Missing-modality fraction P in [0, 1]: at client level, round(P*K) seeded clients lose modalities "
        "for the whole run; at sample level, each training sample loses some with probability P. What is lost is a "
        "set of modalities, never all of them: with two modalities one of them, with M a non-empty proper subset "
        "drawn uniformly from the 2^M-2 possible ones (or fixed by --missing-modality).",
    ),
    missing_level: MissingLevel = typer.Option(
        MissingLevel.client, "--missing-level", case_sensitive=False, help="Apply --missing to clients or to samples."
    ),
    missing_modality: Optional[List[str]] = typer.Option(
        None, "--missing-modality", metavar="NAME",
        help="Modality that is lost (e.g. audio); repeat it or separate names by commas to lose that exact set "
        "(--missing-modality accel --missing-modality gyro = --missing-modality accel,gyro); at least one modality "
        "must stay. Default: the lost set is drawn uniformly per client / sample.",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of every random choice; same seed and dataset = same partition."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Artifact name. Default: derived from the dataset and every option, e.g. cremad-dir0.5-c20-m0.3-s0."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if an identical partition exists, or replace one with other options."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Split the training samples of a prepared dataset over federated clients.

    Writes partitions/<name>/ (assignments, clients, stats.json, heatmap.png) and makes it the latest
    partition, which `cmi train` uses. Validation and test samples stay global.

    Examples:

      cmi partition --alpha 0.5 --missing 0.3          Dirichlet label skew, 30% of clients lack a modality

      cmi partition --alpha 0.1 --clients 50 --seed 1  strong skew over 50 clients

      cmi partition --iid --clients 10                 uniform split

      cmi partition --by actor                         one client per CREMA-D actor

      cmi partition --missing 0.5 --missing-level sample --missing-modality visual

      cmi partition --missing 0.3 --missing-modality accel,gyro     clients keep only the other modalities
    """
    settings = PartitionSettings.from_options(
        alpha=alpha, iid=iid, by=by, clients=clients, min_samples=min_samples, missing=missing,
        missing_level=missing_level.value, missing_modality=missing_modality or None, seed=seed,
    )
    ws = workspace(ctx)
    if quiet:
        run_partition(ws, settings, dataset, name=name, force=force)
        return
    with console.status("partitioning the training split…"):
        outcome = run_partition(ws, settings, dataset, name=name, force=force)
    print_summary(outcome)


def _client_rows(stats: dict[str, Any]) -> list[int | None]:
    """Client indices to show; None stands for the elided middle of a long list."""
    num_clients = stats["num_clients"]
    if num_clients <= TABLE_ROWS:
        return list(range(num_clients))
    half = TABLE_ROWS // 2
    return [*range(half), None, *range(num_clients - half, num_clients)]


def print_summary(outcome: PartitionOutcome) -> None:
    """A table of clients (size, classes, modality availability) and the heterogeneity figures."""
    stats = outcome.stats
    modalities = stats["modalities"]
    groups = stats.get("client_groups")
    het = stats["heterogeneity"]
    table = Table(title=f"{outcome.artifact.name}: {stats['description']}", title_justify="left")
    table.add_column("client", justify="right")
    if groups:
        table.add_column("group")
    table.add_column("samples", justify="right")
    table.add_column("classes", justify="right")
    table.add_column("eff. classes", justify="right")
    for m in modalities:
        table.add_column(f"with {m}", justify="right")
    table.add_column("holds")
    for k in _client_rows(stats):
        if k is None:
            hidden = stats["num_clients"] - TABLE_ROWS
            table.add_row("…", f"{hidden} more clients in stats.json", *([""] * (len(table.columns) - 2)))
            continue
        held = [m for m in modalities if stats["client_modalities"][m][k]]
        holds = " + ".join(held) + ("" if len(held) == len(modalities) else " only")
        table.add_row(
            str(k), *([groups[k]] if groups else []), str(stats["client_sizes"][k]),
            f"{het['classes_present'][k]}/{len(stats['classes'])}", f"{het['effective_classes'][k]:.2f}",
            *(str(stats["modality_counts"][m][k]) for m in modalities), holds,
        )
    console.print(table)
    sizes = stats["sizes"]
    console.print(
        f"[bold]heterogeneity[/]  mean TV distance {het['mean_tv_distance']:.3f} · mean JS distance "
        f"{het['mean_js_distance']:.3f} · mean effective classes {het['mean_effective_classes']:.2f} "
        f"(global {het['global_effective_classes']:.2f} of {len(stats['classes'])})"
    )
    console.print(
        f"[bold]client sizes[/]   min {sizes['min']} · median {sizes['median']:g} · max {sizes['max']} "
        f"({stats['num_samples']} training samples)"
    )
    missing = stats["missing"]
    if missing["fraction"] > 0:
        if missing["level"] == "client":
            lost = [m for m in missing["lost_modality"] if m is not None]
            detail = ", ".join(f"{lost.count(s)} without {s}" for s in sorted(set(lost), key=_lost_order(modalities)))
            fewer = "one modality fewer" if len(modalities) <= 2 else "fewer modalities"
            console.print(f"[bold]missing[/]        {missing['clients']}/{stats['num_clients']} clients hold "
                          f"{fewer} ({detail or 'none'})")
        else:
            detail = ", ".join(f"{n} lost {m}" for m, n in missing["samples_stripped"].items())
            sets = missing.get("lost_sets")
            if sets:
                detail += "; by lost set: " + ", ".join(f"{n} {s}" for s, n in sets.items())
            console.print(f"[bold]missing[/]        training samples: {detail}")
    excluded = stats["excluded"]
    if any(excluded.values()):
        console.print(
            f"[yellow]left out[/]       {excluded['no_modality_in_shards']} samples with no modality in the "
            f"shards, {excluded['lost_last_modality']} whose only "
            f"{'modality' if len(modalities) <= 2 else 'modalities'} their client lost"
        )
    verb = "unchanged (identical partition exists)" if outcome.reused else "written"
    console.print(f"partition [bold]{outcome.artifact.name}[/] {verb}: {outcome.artifact.path}")
    console.print(f"heatmap: {outcome.artifact.file(PARTITION_HEATMAP)}")


def _lost_order(modalities: list[str]):
    """Sort key of lost-set labels (``a``, ``a+b``): by their bitmask over ``modalities``."""
    def key(label: str) -> int:
        return sum(1 << modalities.index(m) for m in label.split("+") if m in modalities)
    return key


def register(app: typer.Typer) -> None:
    app.command("partition")(user_errors(partition))
