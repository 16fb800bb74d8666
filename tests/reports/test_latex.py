"""`--format latex`: booktabs structure, mean ± std in math mode, the best value bold, escaping;
compiled when pdflatex happens to be installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from pipelines.reports.aggregate import group_runs
from pipelines.reports.analysis import build_report
from pipelines.reports.latex import escape, latex_cell
from pipelines.reports.render import render
from pipelines.reports.tables import Cell
from tests.reports.conftest import GRID_RUNS, seed_spec
from tests.reports.runs import write_run

UNESCAPED_AMP = re.compile(r"(?<!\\)&")


def _tabulars(text: str) -> list[list[str]]:
    return [block.split("\n") for block in re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", text, re.S)]


def test_escaping_and_cells():
    assert escape("visual_only 50% R&D #1 $x {a} ~^ \\ <") == (
        r"visual\_only 50\% R\&D \#1 \$x \{a\} \textasciitilde{}\textasciicircum{} \textbackslash{} $<$")
    assert escape("Δ fedcmi · max−min ± 2 — n/a") == r"$\Delta$ fedcmi $\cdot$ max$-$min $\pm$ 2 --- n/a"
    assert latex_cell(Cell(0.783, "pct", spread=0.021)) == r"$78.3 \pm 2.1$"
    assert latex_cell(Cell(0.783, "pct", spread=0.021, bold=True)) == r"$\mathbf{78.3 \pm 2.1}$"
    assert latex_cell(Cell(0.012, "pp")) == "$+1.2$"
    assert latex_cell(Cell((-0.01, 0.03), "pp")) == "$[-1.0, +3.0]$"
    assert latex_cell(Cell(float("nan"), "p")) == "n/a" and latex_cell(Cell(None, "pct")) == "---"
    assert latex_cell(Cell("fedcmi", bold=True)) == r"\textbf{fedcmi}"


def test_aggregated_latex_is_booktabs_with_the_best_bold(grid):
    for seed, k in {0: 6, 1: 7, 2: 5}.items():
        write_run(grid, f"tag-s{seed}", seed_spec("fedavg", seed, k, config={"tag": "R&D_50%"}))
    agg = group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",))
    text = render(agg, "latex")
    assert text.count(r"\begin{table}") == text.count(r"\end{table}") == 4  # groups, mean, statistics, paired
    for rows in _tabulars(text):
        spec_line, *body = rows
        columns = len(re.match(r"\\begin\{tabular\}\{([lr]+)\}", spec_line).group(1))
        assert body[0] == r"\toprule" and body[2] == r"\midrule" and body[-2] == r"\bottomrule"
        for line in body[1:-2]:
            if line not in (r"\midrule",):
                assert line.endswith(r" \\") and len(UNESCAPED_AMP.findall(line)) == columns - 1, line
    mean = _tabulars(text)[1]
    assert "fused & accuracy & $60.0 \\pm 10.0$ & $\\mathbf{80.0 \\pm 10.0}$ \\\\" in mean
    # recall std improves downwards: the lower mean is the bold one
    assert "fused & recall std & $43.4 \\pm 3.2$ & $\\mathbf{31.4 \\pm 15.7}$ \\\\" in mean
    assert r"visual\_only & accuracy" in text and "higher is better; lower for recall std" in text
    assert r"\label{tab:cmi-aggregate-summary-final}" in text
    by_tag = render(group_runs(grid, ["tag-s0", "tag-s1", "tag-s2", "cmi-s0", "cmi-s1", "cmi-s2"], ["tag"],
                               snapshots=("final",)), "latex")
    assert r"path & metric & tag=R\&D\_50\% & tag=? \\" in by_tag


def test_compare_latex_bolds_the_better_run(toy):
    text = render(build_report(toy.ws, ["fedavg", "fedcmi"], compare=True, snapshots=("final",)), "latex")
    assert r"fused & accuracy & $77.8$ & $\mathbf{88.9}$ & $+11.1$ \\" in text
    assert r"path & metric & fedavg & fedcmi & $\Delta$ fedcmi \\" in text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (cmi does not need it)")
def test_latex_compiles(grid, tmp_path):
    body = render(group_runs(grid, GRID_RUNS, ["method"], snapshots=("final",)), "latex")
    (tmp_path / "t.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[utf8]{inputenc}"
                                    "\\begin{document}\n" + body + "\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
