"""Figures: legends by method, print sizes and deterministic vector files."""

from __future__ import annotations

import pytest

from pipelines.reports.analysis import build_report
from pipelines.reports.figures import build_figures, compare_curves, method_labels
from pipelines.reports.style import COLUMN_INCHES, TEXT_WIDTH_INCHES
from tests.reports.conftest import fedavg_spec
from tests.reports.runs import write_run


def test_legends_name_methods_and_runs_only_where_methods_repeat(toy):
    write_run(toy.ws, "fedavg-seed-7", fedavg_spec())
    report = build_report(toy.ws, ["fedavg", "fedcmi", "fedavg-seed-7"], compare=True, paths=["fused"])
    assert method_labels(report.runs) == ["fedavg (fedavg)", "fedcmi", "fedavg (fedavg-seed-7)"]
    two = build_report(toy.ws, ["fedavg", "fedcmi"], compare=True, paths=["fused"])
    legend = compare_curves(two).drawing.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["fedavg (test)", "fedavg (val)", "fedcmi (test)",
                                                         "fedcmi (val)"]


def test_figures_are_drawn_at_print_width_and_render_the_same_bytes(toy):
    report = build_report(toy.ws, ["fedavg", "fedcmi"], compare=True, snapshots=("final",), paths=["fused", "audio_only"])
    figures = build_figures(report)
    widths = {f.key: f.drawing.get_size_inches()[0] for f in figures}
    assert all(w <= TEXT_WIDTH_INCHES + 1e-9 for w in widths.values())
    one_path = build_figures(build_report(toy.ws, ["fedavg", "fedcmi"], compare=True, paths=["fused"]))
    assert one_path[0].key == "compare.curves" and one_path[0].drawing.get_size_inches()[0] == COLUMN_INCHES
    curves = figures[0]
    for fmt in ("svg", "pdf", "png"):
        assert curves.render(fmt) == curves.render(fmt)  # no dates or ids that change
    assert curves.drawing.axes[0].title.get_fontsize() == pytest.approx(8)
