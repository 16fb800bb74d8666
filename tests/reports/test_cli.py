"""`cmi report` through the real CLI app."""

import json
import re
from xml.etree import ElementTree

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.reports.analysis import build_report
from pipelines.reports.tables import build_tables
from tests.reports.test_exporters import HtmlScan

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def invoke(toy, *args):
    return runner.invoke(app, ["--workspace", str(toy.ws.root), "report", *args], env=WIDE)


def test_bare_report_prints_the_summary_of_the_latest_run(toy):
    result = invoke(toy)
    assert result.exit_code == 0, result.output
    assert "Fairness summary · fedcmi · test-best · round 4 (best on validation)" in result.output
    assert "Fairness summary · fedcmi · test-final · round 4 (last round)" in result.output
    assert "Per-class recall" not in result.output and "Per-client" not in result.output


def test_per_class_and_per_client(toy):
    result = invoke(toy, "fedavg", "--per-class", "--per-client", "--snapshot", "final")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Per-class recall · fedavg · test-final · round 4 (last round)" in out
    assert "test-best" not in out.split("Runs", 1)[1].split("predictions", 1)[1]
    assert "worst-10% mean (lowest 2)" in out and "audio+visual" in out
    assert "22.5" in out  # worst-10% client mean, (1/5 + 1/4) / 2


def test_compare_writes_json_to_a_file(toy, tmp_path):
    target = tmp_path / "out" / "cmp.json"
    result = invoke(toy, "--compare", "fedavg", "fedcmi", "--format", "json", "--output", str(target))
    assert result.exit_code == 0, result.output
    data = json.loads(target.read_text())
    assert data["baseline"] == "fedavg" and [r["name"] for r in data["runs"]] == ["fedavg", "fedcmi"]
    assert data["runs"][1]["delta_vs_baseline"]["final"]["summary"]["fused"]["accuracy"] == pytest.approx(1 / 9)
    assert not list(target.parent.glob(".tmp-*"))


def test_csv_goes_to_stdout(toy):
    result = invoke(toy, "fedavg", "-f", "csv", "--path", "fused")
    assert result.exit_code == 0
    assert result.stdout.startswith("run,complete,snapshot,round,section,path,class,client,metric,value,")


def test_table_to_a_file_is_plain_text(toy, tmp_path):
    result = invoke(toy, "fedavg", "--per-class", "-o", str(tmp_path / "r.txt"))
    assert result.exit_code == 0
    text = (tmp_path / "r.txt").read_text()
    assert "Per-class recall · fedavg" in text and "\x1b[" not in text


def test_not_a_run_exits_2_with_the_fix(toy):
    result = invoke(toy, str(toy.ws.artifact_dir("partition", "p")))
    assert result.exit_code == 2
    assert "not a run" in result.output and "cmi train" in result.output


def test_help_documents_every_option(toy):
    result = runner.invoke(app, ["report", "--help"], env=WIDE)
    for option in ("--per-class", "--per-client", "--compare", "--snapshot", "--path", "--format", "--output"):
        assert option in result.output


@pytest.mark.slow
def test_compare_html_is_one_self_contained_file_with_every_figure_and_table(toy):
    result = invoke(toy, "--compare", "fedavg", "fedcmi", "--format", "html")
    assert result.exit_code == 0, result.output
    path = toy.ws.artifact_dir("run", "fedavg") / "compare-fedcmi.html"
    assert path.is_file() and str(path.name) in result.output.replace("\n", "")
    text = path.read_text()
    scan = HtmlScan()
    scan.feed(text)
    scan.close()
    tables = build_tables(build_report(toy.ws, ["fedavg", "fedcmi"], compare=True), per_class=True, per_client=True)
    assert scan.captions == [t.title for t in tables]
    assert scan.tags.count("table") == len(tables)
    # compare: curves + recall (best, final); per run: curves, recall, balance, clients; the shared heatmap once
    svgs = re.findall(r"<svg\b.*?</svg>", text, re.S)
    assert len(svgs) == scan.tags.count("figure") == 3 + 2 * 4 + 1 and not scan.images
    for svg in svgs:
        ElementTree.fromstring(svg)  # every inline figure is well-formed SVG (vector)
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # figures never share an id on the page
    assert text.count("<b>Clients × classes · partition p.</b>") == 1
    assert scan.urls == [] and "script" not in scan.tags and "link" not in scan.tags
    assert "Δ fedcmi" in text and "INCOMPLETE" not in text
