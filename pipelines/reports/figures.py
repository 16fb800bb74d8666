"""The report's figures, drawn headless (Agg) at print size and rendered as PNG, SVG or PDF.

Every figure is drawn under :data:`~pipelines.reports.style.PAPER_STYLE` at the width it prints
at (one column, 3.5 in, for a single panel; the text width, 7.16 in, for several), so its 7–9 pt
text stays legible in a paper. Legends name methods (or an aggregated report's groups), never
run names unless two runs share a method. Colours come from the Okabe–Ito palette (Okabe & Ito
2008, "Color Universal Design"), which stays distinguishable under the common colour-vision
deficiencies; lines also differ by marker, and colour maps are ``cividis``. A bar of height zero
is labelled "0" so that it does not read as missing. Curves over rounds are what training logged
(metrics.jsonl) and say so; bars are recomputed from the saved predictions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from pipelines.partitioning.heatmap import heatmap_figure
from pipelines.reports.aggregate import Aggregate, summarise
from pipelines.reports.analysis import Key, Report, RunReport
from pipelines.reports.load import SNAPSHOT_LABELS, RunData
from pipelines.reports.style import COLUMN_INCHES, DPI, PAPER_STYLE, SAVE_METADATA, TEXT_WIDTH_INCHES

#: Okabe–Ito colours, yellow last (weak contrast on white)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CMAP = "cividis"
#: tallest figure (inches), whatever the number of classes or clients
MAX_INCHES = 9.0


@dataclass(frozen=True)
class Figure:
    """A drawn figure with a title and a caption saying where its data comes from;
    :meth:`render` gives its file in any of :data:`~pipelines.reports.style.FIGURE_FORMATS`."""

    key: str
    title: str
    caption: str
    drawing: MplFigure

    def render(self, fmt: str) -> bytes:
        """The figure as ``fmt`` (png, svg or pdf) bytes; the same figure gives the same bytes."""
        buffer = io.BytesIO()
        with rc_context(PAPER_STYLE):
            self.drawing.savefig(buffer, format=fmt, dpi=DPI, metadata=SAVE_METADATA[fmt])
        return buffer.getvalue()

    @property
    def png(self) -> bytes:
        return self.render("png")


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def _new(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    """A figure of ``nrows`` x ``ncols`` axes, ``width`` x ``height`` inches scaled down (aspect
    kept) to at most the text width, so that it prints at its drawn size."""
    if width > TEXT_WIDTH_INCHES:
        width, height = TEXT_WIDTH_INCHES, height * TEXT_WIDTH_INCHES / width
    fig = MplFigure(figsize=(width, min(height, MAX_INCHES)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes.ravel()


def _series(run: RunData, split: str, field: str, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, values) of ``line[split][field][path]`` (or ``line[split][field]``) over metrics.jsonl;
    NaN where a line lacks it."""
    rounds, values = [], []
    for line in run.metrics:
        v: Any = line.get(split) or {}
        for part in (field, path) if path else (field,):
            v = v.get(part) if isinstance(v, dict) else None
        rounds.append(line["round"])
        values.append(float(v) if _is_number(v) else np.nan)
    return np.asarray(rounds), np.asarray(values, dtype=float)


def _is_number(value: Any) -> bool:
    """A logged number (not None, a list or a flag): what a curve over rounds can plot."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    fig, axes = _new(TEXT_WIDTH_INCHES, 2.6, ncols=2, sharey=True)
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
                  "the dotted line is the round best on validation.", fig)


def _label_zero_bars(ax, bars, values: np.ndarray, color: str) -> None:
    """Write "0" above the bars of ``values`` that are exactly zero (otherwise invisible)."""
    ax.bar_label(bars, labels=np.where(values == 0, "0", ""), fontsize=6, padding=1, color=color)


def _grouped_bars(ax, classes: Sequence[str], series: list[tuple[str, np.ndarray]],
                  errors: Sequence[np.ndarray] | None = None) -> None:
    """Bars of several series (label, per-class values in 0..1) side by side for each class, with
    ``errors`` (per series, per class; e.g. a std over seeds) as error bars; a bar of height zero
    is labelled "0"."""
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, 100 * values, width, color=colour(i), label=label,
                      edgecolor="white", linewidth=0.5,
                      yerr=None if errors is None else 100 * np.nan_to_num(errors[i]),
                      error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "0.2"})
        _label_zero_bars(ax, bars, values, colour(i))
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
    fig, axes = _new(TEXT_WIDTH_INCHES, 2.2 * len(snaps), nrows=len(snaps))
    for ax, snapshot in zip(axes, snaps):
        _grouped_bars(ax, classes, [(p, _recall(report, run, snapshot, p)) for p in paths])
        ax.set_title(f"{SNAPSHOT_LABELS[snapshot]} · round {run.snapshots[snapshot].round}")
        ax.set_xlabel("class")
    fig.legend(*axes[0].get_legend_handles_labels(), title="path", loc="outside right upper", fontsize="small")
    fig.suptitle(f"{run.name}: per-class recall per path")
    return Figure(f"recall.{run.name}", f"Per-class recall · {run.name}",
                  "Recall of each class for each path, recomputed from the saved test predictions.", fig)


def imbalance_panel(ax, run: RunData) -> None:
    """The logged imbalance ratio ρ (val and test) over rounds on ``ax``, on a log y-axis (A ahead
    by a factor k and B ahead by k lie equally far from balance, and a spike does not flatten the
    rest), with the balanced level ρ = 1 drawn as a labelled horizontal line; the server's global
    imbalance ρ̄ too when the method logs one (cmsfed)."""
    for i, split in enumerate(("val", "test")):
        rounds, ratio = _series(run, split, "imbalance_ratio")
        ax.plot(rounds, ratio, color=colour(i), marker=MARKERS[i], markersize=4, label=split)
    rounds, server = _series(run, "server", "global_imbalance")
    if np.isfinite(server).any():
        ax.plot(rounds, server, color=colour(2), marker=MARKERS[2], markersize=4, label=r"server $\bar{\rho}$")
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle="--")
    ax.text(0.01, 1.0, "balanced (ρ = 1)", transform=ax.get_yaxis_transform(), color="0.35", fontsize="small",
            ha="left", va="bottom")
    _mark_best(ax, run)
    ax.set_title("modality imbalance ratio ρ")
    _round_axis(ax)
    if len(run.modalities) == 2 or not run.modalities:
        a, b = (run.modalities[0], run.modalities[-1]) if run.modalities else ("A", "B")
        ax.set_ylabel(f"ρ = Σ P({a}) / Σ P({b})")
    else:  # ρ compares two modalities; a run of M > 2 logs it null unless its method defines one
        ax.set_ylabel("imbalance ratio ρ (as logged)")
    ax.legend(fontsize="small")


def selection_panel(ax, run: RunData) -> None:
    """Clients trained per round as stacked bars: those that trained every modality they hold,
    then those that trained only one modality (cmsfed's weak-only clients), per modality."""
    selection = run.selection
    rounds = [r.round for r in selection]
    bottom = np.array([len(r.clients) - r.single_modality for r in selection])
    ax.bar(rounds, bottom, color="0.75", label="all held modalities")
    for i, m in enumerate(run.modalities):
        only = np.array([len(r.trained_only.get(m, [])) for r in selection])
        ax.bar(rounds, only, bottom=bottom, color=colour(3 + i), label=f"{m} only")
        bottom = bottom + only
    ax.set_title("clients trained per round")
    ax.set_ylabel("clients")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _round_axis(ax)
    ax.legend(fontsize="small")


def balance_over_rounds(run: RunData) -> Figure | None:
    """Imbalance ratio (val and test) and, for FedCMI, class temperatures over rounds; for a
    method that selects modalities (cmsfed) also ρ̄ and the clients trained per round."""
    rounds_t = [line["round"] for line in run.metrics if line.get("temperatures")]
    has_ratio = any(_is_number((line.get(split) or {}).get("imbalance_ratio"))
                    for line in run.metrics for split in ("val", "test"))
    has_selection = bool(run.selection)
    if not has_ratio and not rounds_t and not has_selection:
        return None
    panels = int(has_ratio) + int(bool(rounds_t)) + int(has_selection)
    fig, axes = _new(6 * panels, 4, ncols=panels)
    ax_iter = iter(axes)
    if has_ratio:
        imbalance_panel(next(ax_iter), run)
    if has_selection:
        selection_panel(next(ax_iter), run)
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
                  "Logged each round in metrics.jsonl: the test/validation imbalance ratio ρ = Σ P_A / Σ P_B "
                  "of the self classifiers' ground-truth probabilities (log scale, 1 = balanced; defined for two "
                  "modalities, null and not drawn for more) and "
                  "FedCMI's sample-weighted mean class temperatures (lower = sharper distillation target)."
                  + (" For a method that selects modalities: the server's global imbalance ρ̄ (sample-weighted mean "
                     "of the clients' ρ) and the clients trained each round, by modalities trained."
                     if has_selection else ""),
                  fig)


#: server numbers drawn elsewhere (the imbalance panel draws ρ̄)
_SERVER_KEYS_ELSEWHERE = ("global_imbalance",)


def _server_series(run: RunData) -> dict[str, tuple[list[int], list[list[float]]]]:
    """Key -> (rounds, values per round) of the numbers a method's server logs each round
    (metrics.jsonl ``server``: a float, or a list, e.g. one value per modality); null rounds left out."""
    series: dict[str, tuple[list[int], list[list[float]]]] = {}
    for line in run.metrics:
        for key, value in (line.get("server") or {}).items():
            if key in _SERVER_KEYS_ELSEWHERE or value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if all(isinstance(v, (int, float)) for v in values):
                rounds, rows = series.setdefault(key, ([], []))
                rounds.append(line["round"])
                rows.append([float(v) for v in values])
    return series


def method_dynamics(run: RunData) -> Figure | None:
    """One panel per number the method's server logs (AUG's learners per modality, Remix's
    assignment shares, AGM's coefficients...), over rounds; a list of as many values as the run
    has modalities is one line per modality."""
    series = _server_series(run)
    if not series:
        return None
    per_row = min(len(series), 3)
    rows = -(-len(series) // per_row)
    fig, axes = _new(3.4 * per_row, 2.6 * rows, ncols=per_row, nrows=rows)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    for ax, (key, (rounds, values)) in zip(axes, series.items()):
        width = max(len(v) for v in values)
        names = run.modalities if width == len(run.modalities) else [str(i) for i in range(width)]
        for i in range(width):
            column = [v[i] if i < len(v) else np.nan for v in values]
            ax.plot(rounds, column, color=colour(i), marker=MARKERS[i % len(MARKERS)], markersize=4,
                    label=names[i] if width > 1 else None)
        ax.set_title(key.replace("_", " "))
        _round_axis(ax)
        if width > 1:
            ax.legend(fontsize="small")
    fig.suptitle(f"{run.name}: the method's own dynamics (logged during training)")
    return Figure(f"dynamics.{run.name}", f"Method dynamics · {run.name}",
                  "Numbers the method's server logged each round in metrics.jsonl (`server`), e.g. learners "
                  "per modality, assignment shares or modulation coefficients; one line per modality where "
                  "the method logs one value per modality.", fig)


def partition_heatmap(run: RunData) -> Figure | None:
    """The run's partition redrawn from its stats.json as `cmi partition` draws it: clients ×
    classes counts, each client's total and its modality availability."""
    part = run.partition
    if part is None or part.class_counts is None or part.modality_share is None:
        return None
    drawing = heatmap_figure(part.class_counts, part.modality_share, run.classes, list(part.client_modalities),
                             f"partition {part.name}")
    return Figure(f"heatmap.{part.name}", f"Clients × classes · partition {part.name}",
                  f"Training samples per client and class in partition {part.name} (from its stats.json), each "
                  "client's total and the share of its samples holding each modality.", drawing)


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
    fig, axes = _new(TEXT_WIDTH_INCHES if len(ids) > 12 else COLUMN_INCHES, 2.6)
    ax = axes[0]
    bars = ax.bar(np.arange(len(ids)), 100 * acc[order], color=[palette[groups[i]] for i in order])
    _label_zero_bars(ax, bars, acc[order], "0.2")
    ax.axhline(100 * values[Key("clients", metric="mean")], color="0.2", linestyle="--", label="mean")
    ax.axhline(100 * values[Key("clients", metric="worst10_mean")], color="0.2", linestyle=":",
               label=f"worst-10% mean (lowest {values[Key('clients', metric='worst10_count')]})")
    ax.set_xticks(np.arange(len(ids)), [ids[i] for i in order], fontsize="small")
    ax.set_xlabel("client (sorted by accuracy)")
    ax.set_ylabel("accuracy on own data (%)")
    ax.set_ylim(0, 100)
    handles = ax.get_legend_handles_labels()[0] + [Patch(color=c, label=f"{g} client") for g, c in palette.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    ax.set_title(f"{run.name} · {SNAPSHOT_LABELS[snapshot]}: accuracy on each client's data")
    return Figure(f"clients.{run.name}", f"Per-client accuracy · {run.name}",
                  f"Recomputed from predictions/clients-{snapshot}.parquet; colours = modalities the client holds.",
                  fig)


# ----------------------------------------------------------------------------- comparison


def method_labels(runs: Sequence[RunReport]) -> list[str]:
    """Legend labels of ``runs``: the method, with the run name added where methods repeat."""
    methods = [r.run.method for r in runs]
    return [m if methods.count(m) == 1 else f"{m} ({r.name})" for m, r in zip(methods, runs)]


def _path_panels(count: int, per_row: int, height: float):
    """A figure with one panel per path: one column wide for a single panel, the text width for
    several (``per_row`` to a row), ``height`` inches per row; unused axes hidden."""
    ncols = min(per_row, count)
    nrows = -(-count // ncols)
    fig, axes = _new(COLUMN_INCHES if count == 1 else TEXT_WIDTH_INCHES, height * nrows + 0.5, ncols=ncols,
                     nrows=nrows, sharey=True)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes


def _legend_below(fig, ax, title: str) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title=title, loc="outside lower center", ncols=min(4, max(1, len(labels))))


def compare_curves(report: Report) -> Figure | None:
    if not any(run.run.metrics for run in report.runs):
        return None
    fig, axes = _path_panels(len(report.paths), 3, 1.9)
    labels = method_labels(report.runs)
    for ax, path in zip(axes, report.paths):
        for i, (run, label) in enumerate(zip(report.runs, labels)):
            for split, style in (("test", "-"), ("val", "--")):
                rounds, acc = _series(run.run, split, "accuracy", path)
                ax.plot(rounds, 100 * acc, style, color=colour(i), marker=MARKERS[i % len(MARKERS)],
                        label=f"{label} ({split})")
        ax.set_title(path)
        ax.set_ylabel("accuracy (%)")
        _round_axis(ax)
    _legend_below(fig, axes[0], "method (split)")
    fig.suptitle("Accuracy per path over rounds: solid = test, dashed = validation (logged during training)")
    return Figure("compare.curves", "Accuracy over rounds, runs compared",
                  "Per-path accuracy logged each round in each run's metrics.jsonl.", fig)


def compare_recall(report: Report, snapshot: str) -> Figure | None:
    runs = [run for run in report.runs if snapshot in run.snapshots]
    if not runs:
        return None
    classes = report.runs[0].run.classes
    fig, axes = _path_panels(len(report.paths), 2, 2.0)
    for ax, path in zip(axes, report.paths):
        _grouped_bars(ax, classes, [(label, _recall(report, run, snapshot, path))
                                    for run, label in zip(runs, method_labels(runs))])
        ax.set_title(path)
        ax.set_xlabel("class")
    _legend_below(fig, axes[0], "method")
    fig.suptitle(f"Per-class recall per path · {SNAPSHOT_LABELS[snapshot]}")
    return Figure(f"compare.recall.{snapshot}", f"Per-class recall, runs compared · {SNAPSHOT_LABELS[snapshot]}",
                  "Recomputed from each run's saved test predictions.", fig)


# ----------------------------------------------------------------------------- aggregated reports


def _band(agg: Aggregate, label: str, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, std over the group's runs) of the logged test accuracy of ``path``; a run
    that did not log a round is left out of that round's statistics."""
    group = next(g for g in agg.groups if g.label == label)
    series = [_series(m.run.run, "test", "accuracy", path) for m in group.members]
    series = [(r, v) for r, v in series if r.size]
    if not series:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    rounds = np.unique(np.concatenate([r for r, _ in series]))
    matrix = np.full((len(series), rounds.size), np.nan)
    for i, (r, v) in enumerate(series):
        matrix[i, np.searchsorted(rounds, r)] = v
    stats = summarise(matrix)
    return rounds, np.array([s.mean for s in stats]), np.array([s.std for s in stats])


def _group_title(agg: Aggregate) -> str:
    """The legend title of an aggregated report's groups: "method", or the --group-by keys."""
    return "method" if agg.group_by in ((), ("method",)) else ", ".join(agg.group_by)


def group_curves(agg: Aggregate) -> Figure | None:
    """Test accuracy per path over rounds: each group's mean over its runs, a band of ± one std."""
    if not any(m.run.run.metrics for m in agg.members):
        return None
    fig, axes = _path_panels(len(agg.paths), 3, 1.9)
    for ax, path in zip(axes, agg.paths):
        for i, g in enumerate(agg.groups):
            rounds, mean, std = _band(agg, g.label, path)
            if not rounds.size:
                continue
            ax.plot(rounds, 100 * mean, color=colour(i), marker=MARKERS[i % len(MARKERS)],
                    label=f"{g.label} (n={len(g.members)})")
            ax.fill_between(rounds, 100 * (mean - std), 100 * (mean + std), color=colour(i), alpha=0.2, linewidth=0)
        ax.set_title(path)
        ax.set_ylabel("test accuracy (%)")
        _round_axis(ax)
    _legend_below(fig, axes[0], _group_title(agg))
    return Figure("aggregate.curves", "Test accuracy over rounds, mean ± std over runs",
                  "Test accuracy of each path logged each round in every run's metrics.jsonl: line = mean over the "
                  "group's runs, band = ± one sample std (ddof=1; none with one run).", fig)


def group_recall(agg: Aggregate, snapshot: str) -> Figure | None:
    """Per-class recall per path: each group's mean over its runs, error bars ± one std."""
    if not agg.members:
        return None
    fig, axes = _path_panels(len(agg.paths), 2, 2.0)
    for ax, path in zip(axes, agg.paths):
        keys = [Key("per_class", path=path, cls=c, metric="recall") for c in agg.classes]
        stats = [[agg.summary(snapshot, g, k) for k in keys] for g in agg.groups]
        means = [np.array([s.mean if s else np.nan for s in row]) for row in stats]
        stds = [np.array([s.std if s else np.nan for s in row]) for row in stats]
        _grouped_bars(ax, agg.classes, [(g.label, m) for g, m in zip(agg.groups, means)], errors=stds)
        ax.set_title(path)
        ax.set_xlabel("class")
    _legend_below(fig, axes[0], _group_title(agg))
    fig.suptitle(f"Per-class recall per path · {SNAPSHOT_LABELS[snapshot]}")
    return Figure(f"aggregate.recall.{snapshot}", f"Per-class recall, mean ± std over runs · "
                  f"{SNAPSHOT_LABELS[snapshot]}", "Recomputed from every run's saved test predictions: bar = mean "
                  "over the group's runs, error bar = ± one sample std (ddof=1).", fig)


# ----------------------------------------------------------------------------- all figures


def _report_jobs(report: Report) -> list[Callable[[], Figure | None]]:
    """The comparison's figures first, then each run's (a partition shared by runs once)."""
    jobs: list[Callable[[], Figure | None]] = []
    if report.compare:
        jobs.append(lambda: compare_curves(report))
        jobs += [lambda s=s: compare_recall(report, s) for s in report.snapshots]
    drawn_partitions = set()
    for run in report.runs:
        jobs += [lambda r=run: accuracy_curves(report, r.run), lambda r=run: recall_bars(report, r),
                 lambda r=run: balance_over_rounds(r.run), lambda r=run: method_dynamics(r.run)]
        if run.run.partition is not None and run.run.partition.path not in drawn_partitions:
            drawn_partitions.add(run.run.partition.path)
            jobs.append(lambda r=run: partition_heatmap(r.run))
        jobs.append(lambda r=run: client_accuracy(report, r))
    return jobs


def _aggregate_jobs(agg: Aggregate) -> list[Callable[[], Figure | None]]:
    """Curves with bands, per-class recall per snapshot, then each partition the runs used."""
    jobs: list[Callable[[], Figure | None]] = [lambda: group_curves(agg)]
    jobs += [lambda s=s: group_recall(agg, s) for s in agg.snapshots]
    partitions = {m.run.run.partition.path: m.run.run for m in agg.members if m.run.run.partition is not None}
    jobs += [lambda r=run: partition_heatmap(r) for run in partitions.values()]
    return jobs


def build_figures(subject: Report | Aggregate, progress: Callable[[int, int], None] | None = None) -> list[Figure]:
    """Every figure of a report or an aggregated report, drawn in the paper style and laid out
    for good (the same bytes from every :meth:`Figure.render`). ``progress(done, total)`` is
    called after each figure."""
    jobs = _aggregate_jobs(subject) if isinstance(subject, Aggregate) else _report_jobs(subject)
    figures = []
    with rc_context(PAPER_STYLE):
        for done, job in enumerate(jobs, 1):
            figure = job()
            if figure is not None:
                # lay out once and keep it: every format then renders the very same figure
                figure.drawing.draw_without_rendering()
                figure.drawing.set_layout_engine("none")
                figures.append(figure)
            if progress is not None:
                progress(done, len(jobs))
    return figures
