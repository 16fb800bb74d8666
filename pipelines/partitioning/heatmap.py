"""The partition heatmap: clients x classes sample counts beside each client's modality availability.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend state) and the
colour-blind-safe viridis (counts) and cividis (availability) colormaps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: above this many rows / columns the tick labels would overlap; matplotlib picks ticks instead
MAX_LABELLED_CLIENTS = 40
MAX_LABELLED_CLASSES = 30
#: cells get their count written in them up to this many cells
MAX_ANNOTATED_CELLS = 400


def render_heatmap(
    class_counts: np.ndarray,
    modality_share: np.ndarray,
    classes: list[str],
    modalities: list[str],
    title: str,
    path: str | Path,
) -> None:
    """Write a PNG: ``class_counts`` (clients, classes) as a heatmap and ``modality_share``
    (clients, modalities), the share of each client's samples that have each modality, beside it;
    a white x marks a modality the client does not hold at all."""
    # matplotlib is imported here: reading a partition (every `cmi train`, every Flower ClientApp
    # process) must not pay its ~0.5 s import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_clients, num_classes = class_counts.shape
    width = float(np.clip(3.5 + 0.35 * num_classes + 0.5 * len(modalities), 7, 18))
    height = float(np.clip(2.5 + 0.25 * num_clients, 4, 16))
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    share_width = 0.9 + 0.25 * len(modalities)  # inches: room for the colorbar label below
    counts_ax, share_ax = fig.subplots(1, 2, sharey=True, width_ratios=[max(width - share_width - 3.0, 1.5), share_width])
    counts_img = counts_ax.imshow(class_counts, aspect="auto", cmap="viridis", interpolation="nearest")
    share_img = share_ax.imshow(
        modality_share, aspect="auto", cmap="cividis", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    if class_counts.size <= MAX_ANNOTATED_CELLS:
        bright = class_counts > 0.6 * max(int(class_counts.max()), 1)  # viridis is light at the top
        for (k, c), count in np.ndenumerate(class_counts):
            counts_ax.text(c, k, str(count), ha="center", va="center", fontsize=8,
                           color="black" if bright[k, c] else "white")
    lacking_client, lacking_modality = np.nonzero(modality_share == 0)
    share_ax.scatter(lacking_modality, lacking_client, marker="x", color="white", s=min(40.0, 2000.0 / num_clients),
                     label="modality not held")
    counts_ax.set_xlabel("class")
    counts_ax.set_ylabel("client")
    counts_ax.set_title("training samples per client and class")
    if num_classes <= MAX_LABELLED_CLASSES:
        counts_ax.set_xticks(range(num_classes), classes, rotation=45, ha="right")
    if num_clients <= MAX_LABELLED_CLIENTS:
        counts_ax.set_yticks(range(num_clients), [str(k) for k in range(num_clients)])
    share_ax.set_xticks(range(len(modalities)), modalities, rotation=45, ha="right")
    share_ax.set_title("modality\navailability\n(x: not held)")
    share_ax.tick_params(axis="y", left=False, labelleft=False)
    fig.colorbar(counts_img, ax=counts_ax, label="samples", fraction=0.05, aspect=40)
    fig.colorbar(share_img, ax=share_ax, location="bottom", label="share of samples\nwith the modality",
                 ticks=[0, 0.5, 1], aspect=8)
    fig.suptitle(title)
    fig.savefig(path, format="png", metadata={"Software": None})
