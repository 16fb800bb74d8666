"""The "method dynamics" figure: one panel per number a method's server logs each round
(metrics.jsonl ``server``), a line per modality for per-modality lists; none for runs that log
nothing of the kind."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.reports.figures import method_dynamics
from pipelines.reports.load import load_run
from tests.reports.conftest import PATHS, fedavg_spec
from tests.reports.runs import metrics_line, write_run

# AUG-like learner counts per modality and a scalar; round 2 logs no scalar; ρ̄ is drawn elsewhere
SERVER = [{"learners": [1, 1], "share": 0.5, "global_imbalance": 1.2},
          {"learners": [1, 2], "share": None},
          {"learners": [2, 2], "share": 0.25}]


def test_a_panel_per_logged_number_and_a_line_per_modality(toy):
    lines = [metrics_line(r, PATHS, 0.5, server=server) for r, server in enumerate(SERVER, 1)]
    write_run(toy.ws, "aug", dataclasses.replace(fedavg_spec(), method="aug", metrics=lines))
    run = load_run(toy.ws, "aug")
    figure = method_dynamics(run)
    panels = [ax for ax in figure.drawing.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["learners", "share"]
    learners = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in panels[0].lines}
    assert learners == {run.modalities[0]: ([1, 2, 3], [1.0, 1.0, 2.0]), run.modalities[1]: ([1, 2, 3], [1.0, 2.0, 2.0])}
    (share,) = panels[1].lines
    assert list(share.get_xdata()) == [1, 3] and np.allclose(share.get_ydata(), [0.5, 0.25])
    assert figure.render("svg").startswith(b"<?xml")


def test_no_figure_without_server_numbers(toy):
    assert method_dynamics(load_run(toy.ws, "fedavg")) is None
    lines = [metrics_line(1, PATHS, 0.5, server={"global_imbalance": 1.1})]   # drawn on the balance figure
    write_run(toy.ws, "cms", dataclasses.replace(fedavg_spec(), method="cmsfed", metrics=lines))
    assert method_dynamics(load_run(toy.ws, "cms")) is None
