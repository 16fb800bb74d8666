"""The HTML report's figures, rendered headless (Agg) to PNG bytes.

Colours come from the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design"), which stays
distinguishable under the common colour-vision deficiencies; lines also differ by marker, and
colour maps are ``cividis``. Curves over rounds are what training logged (metrics.jsonl) and
say so; bars are recomputed from the saved predictions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from pipelines.reports.analysis import Key, Report, RunReport
from pipelines.reports.load import SNAPSHOT_LABELS, RunData

#: Okabe–Ito colours, yellow last (weak contrast on white)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CMAP = "cividis"
DPI = 110
#: widest/tallest figure (inches), whatever the number of classes or clients
MAX_INCHES = 22.0


@dataclass(frozen=True)
class Figure:
    """A rendered figure: PNG bytes with a title and a caption saying where its data comes from."""

    key: str
    title: str
    caption: str
    png: bytes


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def _new(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    fig = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes.ravel()


def _png(fig: MplFigure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _series(run: RunData, split: str, field: str, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, values) of ``line[split][field][path]`` (or ``line[split][field]``) over metrics.jsonl;
    NaN where a line lacks it."""
    rounds, values = [], []
    for line in run.metrics:
        v: Any = line.get(split) or {}
        for part in (field, path) if path else (field,):
            v = v.get(part) if isinstance(v, dict) else None
        rounds.append(line["round"])
        values.append(np.nan if v is None else float(v))
    return np.asarray(rounds), np.asarray(values, dtype=float)


def _round_axis(ax) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _mark_best(ax, run: RunData) -> None:
    if run.best_round is not None:
        ax.axvline(run.best_round, color="0.4", linestyle=":", linewidth=1.2, label=f"best round ({run.best_round})")


# ----------------------------------------------------------------------------- one run


def accuracy_curves(report: Report, run: RunData) -> Figure | None:
    if not run.metrics:
        return None
    fig, axes = _new(11, 4, ncols=2, sharey=True)
    for ax, split, name in zip(axes, ("val", "test"), ("validation", "test")):
        for i, path in enumerate(p for p in report.paths if p in run.eval_paths):
            rounds, acc = _series(run, split, "accuracy", path)
            ax.plot(rounds, 100 * acc, color=colour(i), marker=MARKERS[i % len(MARKERS)], markersize=4, label=path)
        _mark_best(ax, run)
        ax.set_title(f"{name} accuracy")
        _round_axis(ax)
    axes[0].set_ylabel("accuracy (%)")
    fig.legend(*axes[1].get_legend_handles_labels(), title="path", loc="outside right upper", fontsize="small")
    fig.suptitle(f"{run.name}: accuracy per path over rounds (logged during training)")
    return Figure(f"curves.{run.name}", f"Accuracy over rounds · {run.name}",
                  "Validation and test accuracy of each path as logged each round in metrics.jsonl; "
                  "the dotted line is the round best on validation.", _png(fig))


def _grouped_bars(ax, classes: Sequence[str], series: list[tuple[str, np.ndarray]]) -> None:
    """Bars of several series (label, per-class values in 0..1) side by side for each class."""
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, 100 * values, width, color=colour(i), label=label,
               edgecolor="white", linewidth=0.5)
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
    ax.set_ylim(0, 100)
    ax.set_ylabel("recall (%)")
    ax.grid(axis="y", alpha=0.3)


def _recall(report: Report, run: RunReport, snapshot: str, path: str) -> np.ndarray:
    values = report.values(run, snapshot)
    return np.array([values.get(Key("per_class", path=path, cls=c, metric="recall"), np.nan)
                     for c in run.run.classes], dtype=float)


def recall_bars(report: Report, run: RunReport) -> Figure | None:
    snaps = [s for s in report.snapshots if s in run.snapshots]
    if not snaps:
        return None
    classes = run.run.classes
    paths = [p for p in report.paths if p in run.run.eval_paths]
    fig, axes = _new(min(max(8.0, 0.35 * len(classes) * len(paths) + 2), MAX_INCHES), 3.6 * len(snaps),
                     nrows=len(snaps))
    for ax, snapshot in zip(axes, snaps):
        _grouped_bars(ax, classes, [(p, _recall(report, run, snapshot, p)) for p in paths])
        ax.set_title(f"{SNAPSHOT_LABELS[snapshot]} · round {run.snapshots[snapshot].round}")
        ax.set_xlabel("class")
    fig.legend(*axes[0].get_legend_handles_labels(), title="path", loc="outside right upper", fontsize="small")
    fig.suptitle(f"{run.name}: per-class recall per path")
    return Figure(f"recall.{run.name}", f"Per-class recall · {run.name}",
                  "Recall of each class for each path, recomputed from the saved test predictions.", _png(fig))


def balance_over_rounds(run: RunData) -> Figure | None:
    """Imbalance ratio (val and test) and, for FedCMI, class temperatures over rounds."""
    rounds_t = [line["round"] for line in run.metrics if line.get("temperatures")]
    has_ratio = any("imbalance_ratio" in (line.get("test") or {}) for line in run.metrics)
    if not has_ratio and not rounds_t:
        return None
    panels = int(has_ratio) + int(bool(rounds_t))
    fig, axes = _new(6 * panels, 4, ncols=panels)
    ax_iter = iter(axes)
    if has_ratio:
        ax = next(ax_iter)
        for i, split in enumerate(("val", "test")):
            rounds, ratio = _series(run, split, "imbalance_ratio")
            ax.plot(rounds, ratio, color=colour(i), marker=MARKERS[i], markersize=4, label=split)
        ax.axhline(1.0, color="0.5", linewidth=0.8)
        _mark_best(ax, run)
        ax.set_title("modality imbalance ratio")
        _round_axis(ax)
        ax.set_ylabel(f"mean P({run.modalities[0]}) / P({run.modalities[-1]})" if run.modalities else "ratio")
        ax.legend(fontsize="small")
    if rounds_t:
        ax = next(ax_iter)
        temps = np.array([line["temperatures"] for line in run.metrics if line.get("temperatures")], dtype=float)
        image = ax.imshow(temps.T, aspect="auto", cmap=CMAP, interpolation="nearest")
        ax.set_xticks(np.arange(len(rounds_t)), [str(r) for r in rounds_t])
        ax.set_yticks(np.arange(len(run.classes)), run.classes)
        ax.set_title("FedCMI class temperature T_c")
        ax.set_xlabel("round")
        ax.set_ylabel("class")
        fig.colorbar(image, ax=ax, label="temperature")
    fig.suptitle(f"{run.name}: modality balance over rounds (logged during training)")
    return Figure(f"balance.{run.name}", f"Imbalance ratio and class temperatures · {run.name}",
                  "Logged each round in metrics.jsonl: the test/validation imbalance ratio (1 = balanced) and "
                  "FedCMI's sample-weighted mean class temperatures (lower = sharper distillation target).",
                  _png(fig))


def partition_heatmap(run: RunData) -> Figure | None:
    """The partition's own heatmap.png, or one redrawn from stats.json's class counts."""
    part = run.partition
    if part is None:
        return None
    caption = f"Training samples per client and class in partition {part.name}, with each client's modalities."
    if part.heatmap is not None:
        return Figure(f"heatmap.{run.name}", f"Clients × classes · partition {part.name}",
                      caption + " Drawn by `cmi partition`.", part.heatmap.read_bytes())
    if part.class_counts is None:
        return None
    counts = part.class_counts
    fig, axes = _new(min(max(6.0, 0.5 * counts.shape[1] + 3), MAX_INCHES),
                     min(max(3.0, 0.3 * counts.shape[0] + 1.5), MAX_INCHES))
    ax = axes[0]
    image = ax.imshow(counts, aspect="auto", cmap=CMAP, interpolation="nearest")
    ax.set_xticks(np.arange(counts.shape[1]), run.classes, rotation=45, ha="right")
    ax.set_yticks(np.arange(counts.shape[0]), [f"{c} · {part.modality_label(c)}" for c in range(counts.shape[0])])
    ax.set_xlabel("class")
    ax.set_ylabel("client · modalities held")
    fig.colorbar(image, ax=ax, label="training samples")
    ax.set_title(f"partition {part.name}: samples per client and class")
    return Figure(f"heatmap.{run.name}", f"Clients × classes · partition {part.name}", caption, _png(fig))


def client_accuracy(report: Report, run: RunReport) -> Figure | None:
    """Per-client accuracy sorted, coloured by modality group, with the mean and worst-10% mean."""
    snapshot = next((s for s in reversed(report.snapshots)
                     if Key("clients", metric="mean") in report.values(run, s)), None)
    if snapshot is None:
        return None
    values = report.values(run, snapshot)
    ids = [k.client for k in values if k.section == "per_client" and k.metric == "accuracy"]
    acc = np.array([values[Key("per_client", client=c, metric="accuracy")] for c in ids])
    groups = [values[Key("per_client", client=c, metric="modalities")] for c in ids]
    order = np.argsort(acc, kind="stable")
    palette = {g: colour(i) for i, g in enumerate(dict.fromkeys(groups))}
    fig, axes = _new(min(max(7.0, 0.25 * len(ids) + 3), MAX_INCHES), 4)
    ax = axes[0]
    ax.bar(np.arange(len(ids)), 100 * acc[order], color=[palette[groups[i]] for i in order])
    ax.axhline(100 * values[Key("clients", metric="mean")], color="0.2", linestyle="--", label="mean")
    ax.axhline(100 * values[Key("clients", metric="worst10_mean")], color="0.2", linestyle=":",
               label=f"worst-10% mean (lowest {values[Key('clients', metric='worst10_count')]})")
    ax.set_xticks(np.arange(len(ids)), [ids[i] for i in order], fontsize="small")
    ax.set_xlabel("client (sorted by accuracy)")
    ax.set_ylabel("accuracy on own data (%)")
    ax.set_ylim(0, 100)
    handles = ax.get_legend_handles_labels()[0] + [Patch(color=c, label=f"{g} client") for g, c in palette.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    ax.set_title(f"{run.name} · {SNAPSHOT_LABELS[snapshot]}: accuracy on each client's data")
    return Figure(f"clients.{run.name}", f"Per-client accuracy · {run.name}",
                  f"Recomputed from predictions/clients-{snapshot}.parquet; colours = modalities the client holds.",
                  _png(fig))


# ----------------------------------------------------------------------------- comparison


def compare_curves(report: Report) -> Figure | None:
    if not any(run.run.metrics for run in report.runs):
        return None
    paths = report.paths
    ncols = min(3, len(paths))
    nrows = -(-len(paths) // ncols)
    fig, axes = _new(5 * ncols, 3.6 * nrows, ncols=ncols, nrows=nrows, sharey=True)
    for ax, path in zip(axes, paths):
        for i, run in enumerate(report.runs):
            for split, style in (("test", "-"), ("val", "--")):
                rounds, acc = _series(run.run, split, "accuracy", path)
                ax.plot(rounds, 100 * acc, style, color=colour(i), marker=MARKERS[i % len(MARKERS)], markersize=3,
                        label=f"{run.name} ({split})")
        ax.set_title(path)
        ax.set_ylabel("accuracy (%)")
        _round_axis(ax)
    for ax in axes[len(paths):]:
        ax.set_visible(False)
    fig.legend(*axes[0].get_legend_handles_labels(), title="run (split)", loc="outside right upper",
               fontsize="small")
    fig.suptitle("Accuracy per path over rounds: solid = test, dashed = validation (logged during training)")
    return Figure("compare.curves", "Accuracy over rounds, runs compared",
                  "Per-path accuracy logged each round in each run's metrics.jsonl.", _png(fig))


def compare_recall(report: Report, snapshot: str) -> Figure | None:
    runs = [run for run in report.runs if snapshot in run.snapshots]
    if not runs:
        return None
    classes = report.runs[0].run.classes
    paths = report.paths
    ncols = min(2, len(paths))
    nrows = -(-len(paths) // ncols)
    panel_width = min(max(5.0, 0.3 * len(classes) * len(runs) + 1.5), MAX_INCHES / 2)
    fig, axes = _new(panel_width * ncols + 1.5, 3.2 * nrows, ncols=ncols, nrows=nrows)
    for ax, path in zip(axes, paths):
        _grouped_bars(ax, classes, [(run.name, _recall(report, run, snapshot, path)) for run in runs])
        ax.set_title(path)
        ax.set_xlabel("class")
    for ax in axes[len(paths):]:
        ax.set_visible(False)
    fig.legend(*axes[0].get_legend_handles_labels(), title="run", loc="outside right upper", fontsize="small")
    fig.suptitle(f"Per-class recall per path · {SNAPSHOT_LABELS[snapshot]}")
    return Figure(f"compare.recall.{snapshot}", f"Per-class recall, runs compared · {SNAPSHOT_LABELS[snapshot]}",
                  "Recomputed from each run's saved test predictions.", _png(fig))


def build_figures(report: Report, progress: Callable[[int, int], None] | None = None) -> list[Figure]:
    """Every figure of the HTML report: the comparison's first, then each run's (a partition
    shared by several runs once). ``progress(done, total)`` is called after each figure."""
    jobs: list[Callable[[], Figure | None]] = []
    if report.compare:
        jobs.append(lambda: compare_curves(report))
        jobs += [lambda s=s: compare_recall(report, s) for s in report.snapshots]
    drawn_partitions = set()
    for run in report.runs:
        jobs += [lambda r=run: accuracy_curves(report, r.run), lambda r=run: recall_bars(report, r),
                 lambda r=run: balance_over_rounds(r.run)]
        if run.run.partition is not None and run.run.partition.path not in drawn_partitions:
            drawn_partitions.add(run.run.partition.path)
            jobs.append(lambda r=run: partition_heatmap(r.run))
        jobs.append(lambda r=run: client_accuracy(report, r))
    figures = []
    for done, job in enumerate(jobs, 1):
        figures.append(job())
        if progress is not None:
            progress(done, len(jobs))
    return [f for f in figures if f is not None]
