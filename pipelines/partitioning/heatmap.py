"""The partition heatmap: clients x classes sample counts, each client's total and its modality
availability, side by side.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend state) at
print size with the report's paper style (:mod:`pipelines.reports.style`), and the colour-blind-
safe viridis (counts) and cividis (availability) colormaps. ``cmi partition`` saves it as
``heatmap.png``; the report redraws it from stats.json in any figure format.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.reports.style import COLUMN_INCHES, DPI, PAPER_STYLE, SAVE_METADATA, TEXT_WIDTH_INCHES

#: above this many rows / columns the tick labels would overlap; matplotlib picks ticks instead
MAX_LABELLED_CLIENTS = 40
MAX_LABELLED_CLASSES = 30
#: cells (and client totals) get their count written in them up to this many cells
MAX_ANNOTATED_CELLS = 400
#: points one title character takes at most on average (DejaVu Sans at the 9 pt figure title)
TITLE_POINTS_PER_CHAR = 5.6


def wrap_title(title: str, width_inches: float) -> str:
    """``title`` with each line wrapped between words to fit a figure ``width_inches`` wide (a
    partition's description is longer than a narrow heatmap, e.g. with several lost modalities)."""
    chars = max(30, int(width_inches * 72 / TITLE_POINTS_PER_CHAR))
    return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


def heatmap_figure(
    class_counts: np.ndarray,
    modality_share: np.ndarray,
    classes: list[str],
    modalities: list[str],
    title: str,
) -> Any:
    """A matplotlib Figure: ``class_counts`` (clients, classes) as a heatmap, each client's total
    as a bar (labelled with its count), and ``modality_share`` (clients, modalities), the share of
    each client's samples that have each modality; a white x marks a modality the client does not
    hold at all. Call it under ``matplotlib.rc_context(PAPER_STYLE)`` for the paper fonts."""
    # matplotlib is imported here: reading a partition (every `cmi train`, every Flower ClientApp
    # process) must not pay its ~0.5 s import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class_counts = np.asarray(class_counts)
    num_clients, num_classes = class_counts.shape
    totals = class_counts.sum(axis=1)
    annotate = class_counts.size <= MAX_ANNOTATED_CELLS
    width = float(np.clip(1.6 + 0.3 * num_classes + 0.25 * len(modalities) + 0.9, COLUMN_INCHES, TEXT_WIDTH_INCHES))
    height = float(np.clip(1.6 + 0.16 * num_clients, 2.6, 9.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    share_width = 0.25 + 0.2 * len(modalities)
    counts_ax, total_ax, share_ax = fig.subplots(
        1, 3, sharey=True, width_ratios=[max(width - share_width - 2.0, 1.2), 0.7, share_width])
    counts_img = counts_ax.imshow(class_counts, aspect="auto", cmap="viridis", interpolation="nearest")
    share_img = share_ax.imshow(
        modality_share, aspect="auto", cmap="cividis", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    cell_font = 6 if num_clients <= 25 else 5
    if annotate:
        bright = class_counts > 0.6 * max(int(class_counts.max()), 1)  # viridis is light at the top
        for (k, c), count in np.ndenumerate(class_counts):
            counts_ax.text(c, k, str(count), ha="center", va="center", fontsize=cell_font,
                           color="black" if bright[k, c] else "white")
    bars = total_ax.barh(np.arange(num_clients), totals, height=0.7, color="0.55")
    if annotate:
        total_ax.bar_label(bars, labels=[str(t) for t in totals], fontsize=cell_font, padding=1)
    total_ax.set_xlim(0, max(int(totals.max()), 1) * 1.45)
    total_ax.set_title("total")
    total_ax.tick_params(axis="y", left=False, labelleft=False)
    total_ax.tick_params(axis="x", labelsize=6)
    lacking_client, lacking_modality = np.nonzero(modality_share == 0)
    share_ax.scatter(lacking_modality, lacking_client, marker="x", color="white", s=min(16.0, 800.0 / num_clients),
                     linewidths=0.8, label="modality not held")
    counts_ax.set_xlabel("class")
    counts_ax.set_ylabel("client")
    counts_ax.set_title("training samples per client and class")
    if num_classes <= MAX_LABELLED_CLASSES:
        counts_ax.set_xticks(range(num_classes), classes, rotation=45, ha="right")
    if num_clients <= MAX_LABELLED_CLIENTS:
        counts_ax.set_yticks(range(num_clients), [str(k) for k in range(num_clients)])
    share_ax.set_xticks(range(len(modalities)), modalities, rotation=45, ha="right")
    share_ax.set_title("modality\n(x: not held)")
    share_ax.tick_params(axis="y", left=False, labelleft=False)
    fig.colorbar(counts_img, ax=counts_ax, location="bottom", label="samples", aspect=30, shrink=0.9)
    fig.colorbar(share_img, ax=share_ax, location="bottom", label="share with\nthe modality", ticks=[0, 1],
                 aspect=8)
    fig.suptitle(wrap_title(title, width))
    return fig


def render_heatmap(
    class_counts: np.ndarray,
    modality_share: np.ndarray,
    classes: list[str],
    modalities: list[str],
    title: str,
    path: str | Path,
    fmt: str = "png",
) -> None:
    """Write :func:`heatmap_figure` of the arguments to ``path`` as ``fmt`` (png, svg or pdf)."""
    from matplotlib import rc_context

    with rc_context(PAPER_STYLE):
        heatmap_figure(class_counts, modality_share, classes, modalities, title).savefig(
            path, format=fmt, dpi=DPI, metadata=SAVE_METADATA[fmt])
