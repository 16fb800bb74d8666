"""What `cmi report` writes: never-cut tables off a terminal, escaped run names, --quiet's one line,
aggregated reports and figure files through the real CLI, and --help."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.reports.analysis import build_report
from pipelines.reports.tables import build_tables
from tests.reports.conftest import fedavg_spec, fedcmi_spec
from tests.reports.runs import write_run

runner = CliRunner()
NARROW = {"COLUMNS": "80"}  # what a pipe or a CI log used to get
LONG = ["fedcmi-synthetic-dir0.5-c20-m0.3-s0-s1", "fedcmi-synthetic-dir0.5-c20-m0.3-s0-s2",
        "fedavg-synthetic-dir0.5-c20-m0.3-s0-s3"]


def invoke(ws, *args):
    return runner.invoke(app, ["--workspace", str(ws.root), "report", *args], env=NARROW)


@pytest.fixture
def five(toy):
    """The toy workspace with three more runs of long names: five runs to compare."""
    write_run(toy.ws, LONG[0], fedcmi_spec())
    write_run(toy.ws, LONG[1], fedcmi_spec())
    write_run(toy.ws, LONG[2], fedavg_spec())
    return toy


def _assert_every_table_whole(text: str, tables) -> None:
    lines = text.splitlines()
    for table in tables:
        header = next((line for line in lines if all(c in line for c in table.columns)), None)
        assert header is not None, f"{table.title}: a column header is cut or missing"
        for row in table.rows:
            cells = [c.text for c in row]
            assert any(all(c in line for c in cells) for line in lines), f"{table.title}: row {cells} is cut"


def test_a_five_run_compare_piped_to_a_file_loses_no_column(five):
    runs = ["fedavg", "fedcmi", *LONG]
    result = invoke(five.ws, "--compare", *runs, "--per-class", "--snapshot", "final")
    assert result.exit_code == 0, result.output
    tables = build_tables(build_report(five.ws, runs, compare=True, snapshots=("final",)), per_class=True,
                          per_client=False)
    assert any(t.key == "compare.temperature.final" for t in tables)  # FedCMI's T, one column per run
    assert f"Δ {LONG[2]}" in tables[1].columns
    _assert_every_table_whole(result.stdout, tables)
    assert max(len(line) for line in result.stdout.splitlines()) > 80  # wider than the old cut


def test_a_per_class_table_to_a_file_keeps_the_temperature_column(five, tmp_path):
    out = tmp_path / "r.txt"
    result = invoke(five.ws, "fedcmi", "--per-class", "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    tables = build_tables(build_report(five.ws, ["fedcmi"]), per_class=True, per_client=False)
    per_class = next(t for t in tables if t.key.startswith("per_class"))
    assert per_class.columns[-1] == "T"
    _assert_every_table_whole(text, tables)


def test_run_names_with_brackets_are_printed_literally(toy):
    write_run(toy.ws, "fedcmi[kappa=2]", fedcmi_spec())
    result = invoke(toy.ws, "--compare", "fedavg", "fedcmi[kappa=2]")
    assert result.exit_code == 0, result.output
    assert "Δ fedcmi[kappa=2]" in result.stdout
    assert "Fairness summary" in result.stdout


def test_quiet_prints_exactly_one_line(toy, tmp_path):
    result = invoke(toy.ws, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "fedcmi: fused accuracy 88.9% (test-best, round 4)"]
    result = invoke(toy.ws, "fedavg", "-q", "-f", "html", "--path", "fused", "--snapshot", "final")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("wrote ")
    assert result.stdout.strip().endswith("report.html")
    result = invoke(toy.ws, "fedavg", "-q", "-f", "latex", "-o", str(tmp_path / "t.tex"), "--figures",
                    str(tmp_path / "figs"), "--figure-format", "pdf", "--path", "fused", "--snapshot", "final")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and "figures (pdf)" in result.stdout
    result = invoke(toy.ws, "-q", "-f", "json")
    assert result.exit_code == 2 and "--output FILE" in result.output


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_figure_files_in_each_format_exist_and_parse(toy, tmp_path, fmt):
    target = tmp_path / "figs"
    result = invoke(toy.ws, "--compare", "fedavg", "fedcmi", "--snapshot", "final", "--path", "fused", "--figures",
                    str(target), "--figure-format", fmt, "-o", str(tmp_path / "r.txt"))
    assert result.exit_code == 0, result.output
    files = sorted(target.iterdir())
    # compare: curves, recall; per run: curves, recall, balance, clients; the partition heatmap
    assert len(files) == 2 + 2 * 4 + 1 and all(f.suffix == f".{fmt}" for f in files)
    assert (target / f"compare.curves.{fmt}").is_file() and (target / f"heatmap.p.{fmt}").is_file()
    for f in files:
        data = f.read_bytes()
        if fmt == "svg":
            assert ElementTree.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"
        elif fmt == "pdf":
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        else:
            assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_machine_formats_on_stdout_stay_parseable_with_figures(toy, tmp_path):
    result = invoke(toy.ws, "fedavg", "-f", "json", "--figures", str(tmp_path / "f"), "--path", "fused",
                    "--snapshot", "final")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["name"] == "fedavg"  # the "wrote" line went to stderr
    assert "figures (svg)" in result.stderr


def test_figure_format_needs_figures(toy):
    result = invoke(toy.ws, "--figure-format", "pdf")
    assert result.exit_code == 2 and "--figures DIR" in result.output


def test_group_by_method_through_the_cli(toy, tmp_path):
    result = invoke(toy.ws, "fedavg", "fedcmi", "--group-by", "method", "--snapshot", "final", "--path", "fused")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Mean ± std over runs · test-final (last round)" in out
    assert "Paired differences vs baseline fedavg" in out
    # one run per group: no std, no interval and no test (n < 2), no crash
    rows = [line.split() for line in out.splitlines()]
    assert ["fused", "accuracy", "fedcmi", "1", "88.9", "—", "n/a"] in rows  # statistics
    assert ["fused", "accuracy", "fedcmi", "1", "+11.1", "n/a", "s0", "+11.1", "1/0/0", "n/a", "n/a"] in rows
    tex = tmp_path / "t.tex"
    result = invoke(toy.ws, "fedavg", "fedcmi", "-g", "method", "-b", "fedcmi", "-f", "latex", "-o", str(tex))
    assert result.exit_code == 0, result.output
    assert r"\toprule" in tex.read_text() and "baseline fedcmi" in tex.read_text()


def test_option_combinations_that_mean_nothing_name_the_fix(toy):
    result = invoke(toy.ws, "--compare", "fedavg", "fedcmi", "--group-by", "method")
    assert result.exit_code == 2 and "use one or the other" in result.output
    result = invoke(toy.ws, "--baseline", "fedavg")
    assert result.exit_code == 2 and "--group-by method" in result.output
    result = invoke(toy.ws, "fedavg", "--experiment", "x")
    assert result.exit_code == 2 and "either RUN... or --experiment" in " ".join(result.output.split())


def test_help_lists_examples_and_choices():
    text = runner.invoke(app, ["report", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--experiment", "--group-by", "--baseline", "--figures", "--figure-format", "--quiet"):
        assert option in text
    assert "table|json|csv|markdown|latex|html" in text and "png|svg|pdf" in text and "both|best|final" in text
    assert "cmi report --experiment paper --format latex" in text
    text = runner.invoke(app, ["partition", "--help"], env={"COLUMNS": "200"}).output
    assert "Examples" in text and "cmi partition --alpha 0.1 --clients 50" in text
    assert "client|sample" in text


def test_experiment_report_through_the_cli(grid, tmp_path):
    from pipelines.experiments.record import Cell, write_experiment

    cells = [Cell(f"avg-s{s}", "fedavg", s, "p", {}, "complete") for s in range(3)]
    cells += [Cell(f"cmi-s{s}", "fedcmi", s, "p", {}, "complete") for s in range(4)]
    directory = grid.artifact_dir("experiment", "paper")
    directory.mkdir(parents=True)
    write_experiment(directory, {"name": "paper", "methods": ["fedavg", "fedcmi"], "seeds": [0, 1, 2, 3],
                                 "partitions": ["p"], "grid": {}, "base": {}}, cells, "complete", {"jobs": 2})
    result = invoke(grid, "--experiment", "paper", "--format", "latex", "--snapshot", "best", "--path", "fused")
    assert result.exit_code == 0, result.output
    assert r"fused & accuracy & $60.0 \pm 10.0$ & $\mathbf{80.0 \pm 10.0}$ \\" in result.stdout
    assert "% note: fedcmi: 3 of 4 runs finished and aggregated; skipped (unfinished): cmi-s3" in result.stdout
    result = invoke(grid, "-e", "paper", "-f", "html", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {directory / 'report.html'}"
    assert (directory / "report.html").read_text().count("<svg") == 1 + 2 + 1  # curves, recall ×2, heatmap
