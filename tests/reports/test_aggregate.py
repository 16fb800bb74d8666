"""Aggregated reports against hand computation on the ``grid`` workspace of conftest.py (fedavg
and fedcmi x three seeds, fused accuracy 0.6/0.7/0.5 and 0.8/0.7/0.9 for seeds 0/1/2, an unfinished
fedcmi run), plus a one-run group and a group equal to the baseline."""

from __future__ import annotations

import csv
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from pipelines.errors import CmiError
from pipelines.reports.aggregate import experiment_groups, group_runs, paired_tests, summarise
from pipelines.reports.aggregate_tables import aggregate_tables
from pipelines.reports.analysis import Key
from pipelines.reports.figures import build_figures
from pipelines.reports.render import render
from tests.reports.conftest import GRID_RUNS, seed_spec
from tests.reports.runs import write_run

FUSED = Key("summary", path="fused", metric="accuracy")


def test_mean_std_and_t_interval_by_hand(grid):
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",))
    assert [g.label for g in agg.groups] == ["fedavg", "fedcmi"] and agg.baseline.label == "fedavg"
    avg = agg.summary("final", agg.groups[0], FUSED)
    assert avg.n == 3 and avg.values == pytest.approx((0.6, 0.7, 0.5))
    assert avg.mean == pytest.approx(0.6)
    assert avg.std == pytest.approx(math.sqrt((0.0 ** 2 + 0.1 ** 2 + 0.1 ** 2) / 2))  # ddof=1: 0.1
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)  # t(0.975; 2) = 4.3027
    assert half == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert (avg.ci_low, avg.ci_high) == pytest.approx((0.6 - half, 0.6 + half))
    cmi = agg.summary("final", agg.groups[1], FUSED)
    assert cmi.n == 3 and cmi.mean == pytest.approx(0.8) and cmi.std == pytest.approx(0.1)
    # per class: class b recall is 2/3, 3/3, 1/3 for fedavg's seeds (k = 6, 7, 5)
    b = agg.summary("final", agg.groups[0], Key("per_class", path="fused", cls="b", metric="recall"))
    assert b.mean == pytest.approx(2 / 3) and b.std == pytest.approx(1 / 3)


def test_paired_differences_follow_the_seed_not_the_order(grid):
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",))
    p = agg.paired_with("final", agg.groups[1], FUSED)
    assert p.pairs == ("s0", "s1", "s2")
    assert p.difference.values == pytest.approx((0.2, 0.0, 0.4))  # 0.8-0.6, 0.7-0.7, 0.9-0.5
    assert p.difference.mean == pytest.approx(0.2) and p.difference.std == pytest.approx(0.2)
    assert (p.wins, p.ties, p.losses) == (2, 1, 0)
    # Wilcoxon drops the zero: 2 positive differences, exact two-sided p = 2 * P(W- = 0) = 2 / 4
    assert p.wilcoxon.p == pytest.approx(0.5)
    assert p.wilcoxon.p == pytest.approx(stats.wilcoxon([0.2, 0.4]).pvalue)
    # paired t: t = 0.2 / (0.2 / sqrt 3) = sqrt 3 on 2 degrees of freedom
    assert p.ttest.p == pytest.approx(2 * stats.t.sf(math.sqrt(3), 2))
    assert p.ttest.p == pytest.approx(stats.ttest_rel([0.8, 0.7, 0.9], [0.6, 0.7, 0.5]).pvalue)


def test_unfinished_runs_are_skipped_and_said(grid):
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",))
    fedcmi = agg.groups[1]
    assert [m.name for m in fedcmi.members] == ["cmi-s2", "cmi-s0", "cmi-s1"]
    assert [(s.name, s.status) for s in fedcmi.skipped] == [("cmi-s3", "running, 2/4 rounds")]
    assert any("fedcmi: 3 of 4 runs finished and aggregated; skipped (unfinished): cmi-s3" in n for n in agg.notes)
    groups = aggregate_tables(agg, per_class=False, per_client=False)[0]
    assert [c.text for c in groups.rows[1][:5]] == ["fedcmi", "", "fedcmi", "3", "1"]


def test_group_by_a_config_key_and_baseline(grid):
    agg = group_runs(grid, GRID_RUNS, ["fedcmi.kappa"], baseline="fedcmi.kappa=2.0", snapshots=("final",))
    assert [g.label for g in agg.groups] == ["fedcmi.kappa=?", "fedcmi.kappa=2.0"]
    assert agg.baseline.label == "fedcmi.kappa=2.0"
    p = agg.paired_with("final", agg.groups[0], FUSED)
    assert p.difference.values == pytest.approx((-0.2, 0.0, -0.4))  # fedavg − fedcmi
    with pytest.raises(CmiError, match="--baseline 'fedprox' is not a group; the groups are: fedavg, fedcmi"):
        group_runs(grid, GRID_RUNS, ["method"], baseline="fedprox", snapshots=("final",))


def test_tests_are_na_with_one_pair_or_no_difference(grid):
    write_run(grid, "prox-s0", seed_spec("fedprox", 0, 6))          # one run, equal to fedavg seed 0
    write_run(grid, "same-s0", seed_spec("fedsame", 0, 6))
    write_run(grid, "same-s1", seed_spec("fedsame", 1, 7))
    write_run(grid, "same-s2", seed_spec("fedsame", 2, 5))           # fedsame = fedavg on every seed
    agg = group_runs(grid, ["avg-s0", "avg-s1", "avg-s2", "prox-s0", "same-s0", "same-s1", "same-s2"], ["method"],
                     snapshots=("final",))
    prox = agg.summary("final", agg.groups[1], FUSED)
    assert prox.n == 1 and prox.mean == pytest.approx(0.6)
    assert math.isnan(prox.std) and math.isnan(prox.ci_low) and math.isnan(prox.ci_high)
    one = agg.paired_with("final", agg.groups[1], FUSED)
    assert math.isnan(one.wilcoxon.p) and one.wilcoxon.note == "n/a: 1 pair, a paired test needs 2"
    same = agg.paired_with("final", agg.groups[2], FUSED)
    assert (same.wins, same.ties, same.losses) == (0, 3, 0)
    assert math.isnan(same.ttest.p) and same.ttest.note == "n/a: every difference is zero"
    table = next(t for t in aggregate_tables(agg, per_class=False, per_client=False)
                 if t.key == "aggregate.paired.final")
    row = next(r for r in table.rows if [c.text for c in r[:3]] == ["fused", "accuracy", "fedprox"])
    assert [c.text for c in row[-3:]] == ["0/1/0", "n/a", "n/a"]
    stats_table = next(t for t in aggregate_tables(agg, per_class=False, per_client=False)
                       if t.key == "aggregate.stats.final")
    row = next(r for r in stats_table.rows if [c.text for c in r[:3]] == ["fused", "accuracy", "fedprox"])
    assert [c.text for c in row[3:]] == ["1", "60.0", "—", "n/a"]


def test_constant_nonzero_differences_have_no_t_test():
    wilcoxon, ttest = paired_tests(np.array([0.7, 0.8, 0.9]), np.array([0.6, 0.7, 0.8]))
    assert wilcoxon.p == pytest.approx(0.25)  # 3 positive differences: 2 / 2^3
    assert math.isnan(ttest.p) and "equal" in ttest.note
    with_nan = paired_tests(np.array([0.7, np.nan, 0.9]), np.array([0.6, 0.7, 0.5]))
    assert with_nan[1].p == pytest.approx(stats.ttest_rel([0.7, 0.9], [0.6, 0.5]).pvalue)


def test_summarise_leaves_nan_out_per_column():
    out = summarise(np.array([[1.0, np.nan], [2.0, 4.0], [3.0, np.nan]]))
    assert (out[0].n, out[0].mean, out[0].std) == (3, 2.0, 1.0)
    assert out[1].n == 1 and out[1].mean == 4.0 and math.isnan(out[1].std)


def test_mean_table_bolds_the_best_and_json_csv_agree(grid):
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",))
    tables = aggregate_tables(agg, per_class=True, per_client=True)
    summary = next(t for t in tables if t.key == "aggregate.summary.final")
    assert summary.columns == ["path", "metric", "fedavg", "fedcmi"]
    row = next(r for r in summary.rows if [c.text for c in r[:2]] == ["fused", "accuracy"])
    assert [(c.text, c.bold) for c in row[2:]] == [("60.0 ± 10.0", False), ("80.0 ± 10.0", True)]
    assert "Bold: the best value of a row" in summary.note
    assert any(t.key == "aggregate.per_class.fused.final" for t in tables)
    data = json.loads(render(agg, "json"))
    assert data["kind"] == "aggregate" and data["baseline"] == "fedavg"
    fused = data["results"]["final"]["groups"]["fedavg"]["summary"]["fused"]["accuracy"]
    assert fused["n"] == 3 and fused["mean"] == pytest.approx(0.6) and fused["std"] == pytest.approx(0.1)
    diff = data["results"]["final"]["vs_baseline"]["fedcmi"]["summary"]["fused"]["accuracy"]
    assert diff["pairs"] == ["s0", "s1", "s2"] and diff["wilcoxon_p"] == pytest.approx(0.5)
    assert data["groups"][1]["skipped"] == [{"name": "cmi-s3", "status": "running, 2/4 rounds"}]
    rows = list(csv.DictReader(io.StringIO(render(agg, "csv"))))
    row = next(r for r in rows if (r["group"], r["section"], r["path"], r["metric"]) ==
               ("fedcmi", "summary", "fused", "accuracy"))
    assert float(row["mean"]) == pytest.approx(0.8) and row["differences"].split(";")[2] == str(0.9 - 0.5)
    assert float(row["ttest_rel_p"]) == pytest.approx(diff["ttest_rel_p"])


def test_curves_band_is_the_mean_and_std_over_seeds(grid):
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",), paths=["fused"])
    figures = {f.key: f for f in build_figures(agg)}
    assert list(figures) == ["aggregate.curves", "aggregate.recall.final", "heatmap.p"]
    ax = figures["aggregate.curves"].drawing.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["fedavg (n=3)", "fedcmi (n=3)"]
    # logged test accuracy of fused at round 4 is k/10 + 0.01: fedavg mean (0.6, 0.7, 0.5) + 0.01
    np.testing.assert_allclose(lines["fedavg (n=3)"].get_ydata(), 100 * (0.6 + 0.01 - 0.1 * np.arange(3, -1, -1)))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(100 * (0.6 + 0.01 - 0.3 - 0.1)) and band.max() == pytest.approx(61.0 + 10)


def test_experiment_cells_become_groups_with_unstarted_cells_skipped(grid, monkeypatch):
    cells = [SimpleNamespace(run=f"avg-s{s}", method="fedavg", seed=s, partition="p", overrides={},
                             status="complete") for s in range(3)]
    cells += [SimpleNamespace(run=f"cmi-s{s}", method="fedcmi", seed=s, partition="p",
                              overrides={"fedcmi.kappa": 2.0}, status="complete") for s in range(3)]
    cells += [SimpleNamespace(run="cmi-s9", method="fedcmi", seed=9, partition="p", overrides={"fedcmi.kappa": 2.0},
                              status="pending")]
    experiment = SimpleNamespace(name="paper", path=grid.root / "experiments" / "paper", cells=cells,
                                 run_path=lambda cell: grid.artifact_dir("run", cell.run))
    import pipelines.experiments

    monkeypatch.setattr(pipelines.experiments, "load_experiment", lambda ws, name: experiment, raising=False)
    agg = experiment_groups(grid, "paper", snapshots=("final",))
    assert [g.label for g in agg.groups] == ["fedavg", "fedcmi (kappa=2.0)"]
    assert [(s.name, s.status) for s in agg.groups[1].skipped] == [("cmi-s9", "pending, no run directory yet")]
    assert agg.html_path == grid.root / "experiments" / "paper" / "report.html"
    assert agg.paired_with("final", agg.groups[1], FUSED).difference.mean == pytest.approx(0.2)
    by_kappa = experiment_groups(grid, "paper", ["fedcmi.kappa"], snapshots=("final",))
    assert [g.label for g in by_kappa.groups] == ["fedcmi.kappa=?", "fedcmi.kappa=2.0"]


def test_experiment_manifest_of_the_experiment_module(grid):
    from pipelines.experiments.record import Cell, write_experiment

    cells = [Cell(f"avg-s{s}", "fedavg", s, "p", {}, "complete") for s in range(3)]
    cells += [Cell(f"cmi-s{s}", "fedcmi", s, "p", {"fedcmi.kappa": 2.0}, "complete") for s in range(4)]
    cells.append(Cell("cmi-s4", "fedcmi", 4, "p", {"fedcmi.kappa": 2.0}, "pending"))
    directory = grid.artifact_dir("experiment", "paper")
    directory.mkdir(parents=True)
    write_experiment(directory, {"name": "paper", "methods": ["fedavg", "fedcmi"], "seeds": [0, 1, 2, 3, 4],
                                 "partitions": ["p"], "grid": {"fedcmi.kappa": [2.0]}, "base": {}},
                     cells, "complete", {"jobs": 2})
    agg = experiment_groups(grid, "paper", baseline="fedavg", snapshots=("final",))
    assert agg.experiment == "paper" and agg.title == "experiment paper"
    fedcmi = agg.groups[1]
    assert fedcmi.label == "fedcmi (kappa=2.0)" and [m.name for m in fedcmi.members] == ["cmi-s0", "cmi-s1", "cmi-s2"]
    assert [(s.name, s.status) for s in fedcmi.skipped] == [("cmi-s3", "running, 2/4 rounds"),
                                                            ("cmi-s4", "pending, no run directory yet")]
    assert agg.summary("final", fedcmi, FUSED).mean == pytest.approx(0.8)
    assert agg.html_path == directory / "report.html"


def test_zero_bars_are_labelled(grid):
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",), paths=["fused"])
    ax = next(f for f in build_figures(agg) if f.key == "aggregate.recall.final").drawing.axes[0]
    # class c: fedavg recalls 0 on every seed (mean 0, a bar of no height), fedcmi 1/3 on average
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["0"]
    assert [p.get_height() for p in ax.patches][:3] == pytest.approx([100, 200 / 3, 0])
