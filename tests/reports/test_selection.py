"""The client selection of a method that selects modalities (cmsfed): one table row per logged
round in every table format, the decisions in JSON, and the balance figure's extra series; runs
whose metrics carry no ``trained_only`` show none of it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.reports.analysis import build_report
from pipelines.reports.figures import balance_over_rounds
from pipelines.reports.load import load_run
from pipelines.reports.render import render
from pipelines.reports.tables import build_tables, compact_ids
from tests.reports.conftest import PATHS, fedavg_spec
from tests.reports.runs import metrics_line, write_run
from tests.reports.test_exporters import _markdown_tables

# per round: clients trained, trained_only, the server's ρ̄ (clients 0-7 hold both modalities,
# 8-9 audio only, 10-11 visual only); ρ̄ > 1 makes the next round's weak-only clients train visual
SELECTION = [
    (list(range(12)), {}, None),
    ([0, 1, 2, 3, 4, 10], {}, 1.23456),
    ([1, 2, 3, 5, 6, 7], {"visual": [3, 1, 2]}, 0.75),
    ([0, 4, 9, 11], {"audio": [0, 9]}, 0.8),
]
# the rows as printed: round, clients trained, audio only, visual only, global imbalance ρ̄
ROWS = [
    ["1", "12 (0–11)", "—", "—", "—"],
    ["2", "6 (0–4, 10)", "—", "—", "1.235"],
    ["3", "6 (1–3, 5–7)", "—", "1–3", "0.750"],
    ["4", "4 (0, 4, 9, 11)", "0, 9", "—", "0.800"],
]
TITLE = "Client selection · cmsfed"


@pytest.fixture
def ws(toy):
    """The toy workspace (fedavg, fedcmi) with a cmsfed run logging :data:`SELECTION`."""
    lines = [metrics_line(r, PATHS, 0.4 + 0.1 * r, clients=clients, trained_only=only,
                          server={"global_imbalance": rho})
             for r, (clients, only, rho) in enumerate(SELECTION, 1)]
    write_run(toy.ws, "cmsfed", dataclasses.replace(fedavg_spec(), method="cmsfed", metrics=lines))
    return toy.ws


@pytest.mark.parametrize("ids, text", [
    ([], "—"), ([3], "3"), ([1, 0], "0, 1"), ([9, 0, 1, 2, 5, 7, 8, 2], "0–2, 5, 7–9"), ([4, 5, 6, 7], "4–7"),
])
def test_client_ids_print_as_ranges(ids, text):
    assert compact_ids(ids) == text


def test_markdown_has_one_row_per_round(ws):
    text = render(build_report(ws, ["cmsfed"]), "markdown", per_client=True)
    assert "| round | clients trained | audio only | visual only | global imbalance ρ̄ |" in text
    assert _markdown_tables(text)[TITLE] == ROWS
    assert TITLE not in render(build_report(ws, ["cmsfed"]), "markdown")   # with the per-client tables only


def test_the_terminal_table_has_one_row_per_round(ws):
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "report", "cmsfed", "--per-client"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if TITLE in line)
    rows = [line.split() for line in lines[start:start + 12]]
    for row in ROWS:
        assert " ".join(row).split() in rows
    assert ["round", "clients", "trained", "audio", "only", "visual", "only", "global", "imbalance", "ρ̄"] in rows


def test_latex_and_html_show_the_rows(ws):
    report = build_report(ws, ["cmsfed"])
    tex = render(report, "latex", per_client=True)
    assert r"round & clients trained & audio only & visual only & global imbalance $\bar{\rho}$ \\" in tex
    assert r"$1$ & 12 (0--11) & --- & --- & --- \\" in tex
    assert r"$3$ & 6 (1--3, 5--7) & --- & 1--3 & $0.750$ \\" in tex
    assert r"$4$ & 4 (0, 4, 9, 11) & 0, 9 & --- & $0.800$ \\" in tex
    assert "ρ" not in tex                                                    # pdflatex-safe
    page = render(report, "html")                                            # HTML holds every table
    assert f"<caption>{TITLE}</caption>" in page
    row = '<tr><td class="num">2</td><td>6 (0–4, 10)</td><td>—</td><td>—</td><td class="num">1.235</td></tr>'
    assert row in page


def test_json_holds_the_decisions(ws):
    data = json.loads(render(build_report(ws, ["cmsfed", "fedavg"]), "json"))
    cmsfed, fedavg = data["runs"]
    assert cmsfed["client_selection"] == [
        {"round": r, "clients": clients, "trained_only": {m: sorted(ids) for m, ids in only.items()},
         "global_imbalance": rho}
        for r, (clients, only, rho) in enumerate(SELECTION, 1)
    ]
    assert "client_selection" not in fedavg


def test_runs_without_trained_only_show_no_selection(ws):
    for refs, compare in ((["fedavg"], False), (["fedcmi"], False), (["fedavg", "fedcmi"], True)):
        report = build_report(ws, refs, compare=compare)
        assert not [t for t in build_tables(report, per_class=True, per_client=True) if t.key.startswith("selection")]
        assert "Client selection" not in render(report, "markdown", per_class=True, per_client=True)
        assert "Client selection" not in render(report, "html")
    compared = build_tables(build_report(ws, ["fedavg", "cmsfed"], compare=True), per_class=False, per_client=True)
    assert [t.key for t in compared if t.key.startswith("selection")] == ["selection.cmsfed"]


def test_the_balance_figure_adds_rho_bar_and_the_clients_per_round(ws):
    figure = balance_over_rounds(load_run(ws, "cmsfed"))
    ratio, selection = figure.drawing.axes
    server = next(line for line in ratio.get_lines() if line.get_label() == r"server $\bar{\rho}$")
    assert np.array_equal(server.get_ydata(), [np.nan, 1.23456, 0.75, 0.8], equal_nan=True)
    stacks = {bars.get_label(): [bar.get_height() for bar in bars] for bars in selection.containers}
    assert stacks == {"all held modalities": [12, 6, 3, 2], "audio only": [0, 0, 0, 2], "visual only": [0, 0, 3, 0]}
    assert figure.png.startswith(b"\x89PNG") and "ρ̄" in figure.caption
    plain = balance_over_rounds(load_run(ws, "fedavg"))
    assert len(plain.drawing.axes) == 1 and len(plain.drawing.axes[0].get_lines()) == 4   # val, test, ρ = 1, best
