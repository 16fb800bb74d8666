"""Reports of runs with three modalities: every path (fused, <m>_only, <m>_self for each m) in every
format, client groups and the partition heatmap's availability columns from a real three-modality
partition (some clients lost a set of modalities), and the balance figure when the two-modality
imbalance ratio is logged null."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest
from matplotlib.figure import Figure as MplFigure
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace, eval_paths
from pipelines.partitioning import PartitionSettings, run_partition
from pipelines.reports.analysis import Key, build_report
from pipelines.reports.figures import balance_over_rounds, build_figures, imbalance_panel, partition_heatmap
from pipelines.reports.load import load_run
from pipelines.reports.render import render
from pipelines.reports.tables import build_tables
from pipelines.shards import ModalitySpec
from tests.factories import make_dataset
from tests.reports.conftest import client_preds
from tests.reports.runs import Predictions, RunSpec, metrics_line, write_run

M3 = ("accel", "gyro", "feat")
PATHS3 = eval_paths(list(M3))
SPECS = (ModalitySpec("accel", "sequence", (16, 4), "float32"), ModalitySpec("gyro", "sequence", (16, 4), "float32"),
         ModalitySpec("feat", "vector", (8,), "float32"))
# 9 test samples, 3 per class; the last one has no feat (feat paths: -1; fused from accel and gyro)
LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDS = {
    "fused":      [0, 0, 0, 1, 1, 1, 2, 2, 1],   # 8/9
    "accel_only": [0, 0, 1, 1, 1, 1, 2, 2, 2],   # 8/9
    "gyro_only":  [0, 0, 0, 1, 1, 0, 2, 0, 2],   # 7/9
    "feat_only":  [0, 0, 0, 1, 1, 1, 2, 2, -1],  # 8/8
    "accel_self": [0, 0, 1, 1, 1, 1, 2, 2, 2],   # 8/9
    "gyro_self":  [0, 1, 0, 1, 1, 1, 2, 2, 2],   # 8/9
    "feat_self":  [1, 0, 0, 1, 1, 1, 2, 2, -1],  # 7/8
}
# per client (samples, correct) on its own training data, 6 clients
CLIENTS = [(2, 2), (3, 1), (4, 4), (1, 0), (5, 3), (2, 1)]


def _spec(method: str, **kw) -> RunSpec:
    temps = (lambda r: [1.0, 0.9, 0.8]) if method == "fedcmi" else (lambda r: None)
    return RunSpec(
        method=method, modalities=M3, partition=kw.pop("partition"),
        metrics=[metrics_line(r, PATHS3, 0.4 + 0.1 * r, ratio=None, temperatures=temps(r)) for r in range(1, 5)],
        test={"best": Predictions(3, LABELS, PREDS), "final": Predictions(4, LABELS, PREDS)},
        clients={"best": client_preds(3, CLIENTS), "final": client_preds(4, CLIENTS)}, **kw)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> tuple[Workspace, dict]:
    """A workspace with a real three-modality partition (3 of 6 clients lost a set) and a fedavg
    and a fedcmi run on it that log no imbalance ratio (null: it compares two modalities)."""
    ws = Workspace(tmp_path_factory.mktemp("three") / "ws")
    make_dataset(ws, specs=SPECS, per_class={"train": 30, "val": 2, "test": 3})
    outcome = run_partition(ws, PartitionSettings.from_options(alpha=1.0, clients=6, missing=0.5, seed=2))
    assert outcome.stats["missing"]["clients"] == 3
    write_run(ws, "avg3", _spec("fedavg", partition=outcome.artifact.name))
    write_run(ws, "cmi3", _spec("fedcmi", partition=outcome.artifact.name))
    return ws, outcome.stats


def test_every_path_of_the_three_modalities_is_recomputed(three):
    ws, _ = three
    report = build_report(ws, ["avg3", "cmi3"], compare=True)
    assert report.paths == PATHS3 == ["fused", "accel_only", "gyro_only", "feat_only", "accel_self", "gyro_self",
                                      "feat_self"]
    run = report.runs[1]
    value = lambda path, metric: report.value(run, "final", Key("summary", path=path, metric=metric))  # noqa: E731
    assert value("feat_self", "rows") == 8 and value("feat_self", "accuracy") == pytest.approx(7 / 8)
    assert value("gyro_only", "accuracy") == pytest.approx(7 / 9)
    assert value("feat_only", "accuracy") == 1.0
    # fused − path on the rows where both are defined: feat_self's 8 rows, fused right on 8 of them
    assert value("feat_self", "fused_minus_path") == pytest.approx(1 - 7 / 8)
    summary = next(t for t in build_tables(report, per_class=True, per_client=True)
                   if t.key == "compare.summary.final")
    assert {row[0].text for row in summary.rows} == set(PATHS3)
    per_class = [t for t in build_tables(report, per_class=True, per_client=False) if t.key.startswith("compare.per_class")]
    assert [t.key for t in per_class] == [f"compare.per_class.{p}.{s}" for s in ("best", "final") for p in PATHS3]


def test_client_groups_name_the_modalities_each_client_holds(three):
    ws, stats = three
    report = build_report(ws, ["cmi3"])
    values = report.values(report.runs[0], "final")
    for k in range(6):
        held = "+".join(m for m in M3 if stats["client_modalities"][m][k])
        assert values[Key("per_client", client=str(k), metric="modalities")] == held
    lost = [label for label in stats["missing"]["lost_modality"] if label]
    groups = {key.client for key in values if key.section == "clients" and key.client}
    assert "accel+gyro+feat" in groups and len(groups) == 1 + len(set(lost))


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "latex", "html"])
def test_every_format_holds_the_three_modalities_paths(three, fmt):
    ws, _ = three
    report = build_report(ws, ["avg3", "cmi3"], compare=True, snapshots=("final",))
    text = render(report, fmt, per_class=True, per_client=True)
    if fmt == "json":
        data = json.loads(text)
        for run in data["runs"]:
            assert run["modalities"] == list(M3) and run["eval_paths"] == PATHS3
            assert list(run["snapshots"]["final"]["summary"]) == PATHS3
            assert set(run["snapshots"]["final"]["per_class"]["a"]["recall"]) == set(PATHS3)
        assert data["runs"][1]["snapshots"]["final"]["summary"]["feat_self"]["rows"] == 8
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {r["path"] for r in rows if r["section"] == "summary"} == set(PATHS3)
    else:
        for m in M3:  # LaTeX escapes the underscore
            assert (rf"{m}\_self" if fmt == "latex" else f"{m}_self") in text
    if fmt == "html":
        assert text.count("<svg") >= 5  # curves, recall, clients, balance (fedcmi), heatmap figures embedded


def test_the_cli_reports_three_modalities_in_a_comparison_and_over_seeds(three, tmp_path):
    ws, _ = three
    runner = CliRunner()
    result = runner.invoke(app, ["--workspace", str(ws.root), "report", "--compare", "avg3", "cmi3", "--per-class",
                                 "--per-client", "--figures", str(tmp_path / "figs")], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    for path in ("accel_self", "gyro_self", "feat_self", "accel_only", "gyro_only", "feat_only"):
        assert path in result.stdout
    assert (tmp_path / "figs").is_dir() and any(f.name.startswith("heatmap.") for f in (tmp_path / "figs").iterdir())
    grouped = runner.invoke(app, ["--workspace", str(ws.root), "report", "avg3", "cmi3", "--group-by", "method",
                                  "-f", "json"])
    assert grouped.exit_code == 0, grouped.output
    assert all(p in grouped.stdout for p in PATHS3)


def test_the_heatmap_has_one_availability_column_per_modality(three):
    ws, stats = three
    run = load_run(ws, "cmi3")
    share = run.partition.modality_share
    assert share.shape == (6, 3)
    sizes = np.asarray(stats["client_sizes"], dtype=float)
    for i, m in enumerate(M3):
        np.testing.assert_allclose(share[:, i], np.asarray(stats["modality_counts"][m]) / sizes)
    figure = partition_heatmap(run)
    share_ax = next(ax for ax in figure.drawing.axes if [t.get_text() for t in ax.get_xticklabels()] == list(M3))
    np.testing.assert_allclose(share_ax.get_images()[0].get_array(), share)
    # a white x on each modality a client does not hold at all
    marks = share_ax.collections[0].get_offsets()
    expected = {(i, k) for k in range(6) for i, m in enumerate(M3) if not stats["client_modalities"][m][k]}
    assert {(int(x), int(y)) for x, y in marks} == expected and expected
    assert figure.png.startswith(b"\x89PNG")


def test_balance_figure_without_the_two_modality_ratio(three):
    ws, _ = three
    assert balance_over_rounds(load_run(ws, "avg3")) is None  # no ratio, no temperatures: nothing to draw
    cmi = balance_over_rounds(load_run(ws, "cmi3"))
    titles = [ax.get_title() for ax in cmi.drawing.axes]
    assert "FedCMI class temperature T_c" in titles and "modality imbalance ratio ρ" not in titles
    # a method that logs its own ratio for M > 2 gets it drawn, without naming two of the modalities
    run = load_run(ws, "cmi3")
    for line in run.metrics:
        line["test"]["imbalance_ratio"], line["val"]["imbalance_ratio"] = 2.0, [1.0, 2.0, 3.0]
    ax = MplFigure().subplots()
    imbalance_panel(ax, run)
    assert ax.get_ylabel() == "imbalance ratio ρ (as logged)"
    curves = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert list(curves["test"]) == [2.0] * 4 and np.isnan(curves["val"]).all()  # a list is not a ratio
    for line in run.metrics:
        line["test"]["imbalance_ratio"] = [1.0, 2.0, 3.0]
    titles = [ax.get_title() for ax in balance_over_rounds(run).drawing.axes]
    assert "modality imbalance ratio ρ" not in titles


def test_client_selection_of_three_modalities(three):
    ws, _ = three
    lines = [metrics_line(r, PATHS3, 0.5, ratio=None, clients=[0, 1, 2, 3], trained_only={"feat": [1], "gyro": [2, 3]},
                          server={"global_imbalance": None}) for r in range(1, 3)]
    write_run(ws, "cms3", dataclasses.replace(_spec("fedavg", partition=load_run(ws, "cmi3").partition_name),
                                              method="cmsfed", metrics=lines))
    table = next(t for t in build_tables(build_report(ws, ["cms3"]), per_class=False, per_client=True)
                 if t.key == "selection.cms3")
    assert table.columns == ["round", "clients trained", "accel only", "gyro only", "feat only", "global imbalance ρ̄"]
    assert [c.text for c in table.rows[0]] == ["1", "4 (0–3)", "—", "2, 3", "1", "—"]
    assert "defined for two modalities" in table.note
    assert any(f.key == "balance.cms3" for f in build_figures(build_report(ws, ["cms3"])))
