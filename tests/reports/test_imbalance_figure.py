"""The imbalance-ratio figure: logged ρ per round on a log axis with the balanced level marked."""

import numpy as np
from matplotlib.figure import Figure as MplFigure

from pipelines.reports.figures import balance_over_rounds, imbalance_panel
from pipelines.reports.load import load_run

# test / val ρ for rounds 1-4: a spike to 1e4 and a dip to 1e-3 around balanced rounds
TEST_RHO = [1e4, 2.0, 0.5, 1e-3]
VAL_RHO = [50.0, 1.0, 0.8, 0.01]


def _run_with_ratios(toy):
    run = load_run(toy.ws, "fedcmi")
    for line, test, val in zip(run.metrics, TEST_RHO, VAL_RHO):
        line["test"]["imbalance_ratio"], line["val"]["imbalance_ratio"] = test, val
    return run


def test_the_ratio_is_plotted_on_a_log_axis_with_the_balanced_level_labelled(toy):
    run = _run_with_ratios(toy)
    ax = MplFigure().subplots()
    imbalance_panel(ax, run)
    assert ax.get_yscale() == "log"
    curves = {line.get_label(): line for line in ax.get_lines()}
    assert np.array_equal(curves["test"].get_xdata(), [1, 2, 3, 4])
    assert np.array_equal(curves["test"].get_ydata(), TEST_RHO)
    assert np.array_equal(curves["val"].get_ydata(), VAL_RHO)
    horizontal = [line for line in ax.get_lines() if list(line.get_ydata()) == [1.0, 1.0]]
    assert len(horizontal) == 1
    assert [t.get_text() for t in ax.texts] == ["balanced (ρ = 1)"]
    low, high = ax.get_ylim()
    assert low <= 1e-3 and high >= 1e4                     # every value is in view, none clipped
    assert ax.get_ylabel() == "ρ = Σ P(audio) / Σ P(visual)"


def test_the_balance_figure_renders_and_is_left_out_without_a_ratio_or_temperatures(toy):
    figure = balance_over_rounds(_run_with_ratios(toy))
    assert figure is not None and figure.png.startswith(b"\x89PNG")
    assert "log scale" in figure.caption
    run = load_run(toy.ws, "fedavg")                       # no temperatures: the ratio is its only panel
    for line in run.metrics:
        line["test"]["imbalance_ratio"] = line["val"]["imbalance_ratio"] = None   # one-modality model
    assert balance_over_rounds(run) is None
