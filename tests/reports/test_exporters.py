"""JSON, CSV, Markdown and HTML outputs parse and agree with each other and with the report."""

import csv
import io
import json
import math
from html.parser import HTMLParser

import pytest

from pipelines.reports.analysis import build_report
from pipelines.reports.render import render
from pipelines.reports.tables import METRIC_LABELS, build_tables
from tests.reports.runs import RunSpec, write_run


def _json_leaf(snapshot: dict, row: dict):
    """The JSON value that a CSV row addresses (layout of exporters.nest)."""
    section, path, cls, client, metric = (row[k] for k in ("section", "path", "class", "client", "metric"))
    if section == "summary":
        return snapshot["summary"][path][metric]
    if section == "per_class":
        return snapshot["per_class"][cls]["recall"][path] if path else snapshot["per_class"][cls][metric]
    if section == "per_client":
        return snapshot["per_client"][client][metric]
    return snapshot["clients"]["groups"][client][metric] if client else snapshot["clients"][metric]


def _count_leaves(obj) -> int:
    return sum(_count_leaves(v) for v in obj.values()) if isinstance(obj, dict) else 1


def _csv_value(text: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


@pytest.fixture
def compare_report(toy):
    return build_report(toy.ws, ["fedavg", "fedcmi"], compare=True)


def test_json_and_csv_hold_the_same_numbers(compare_report):
    data = json.loads(render(compare_report, "json"))
    rows = list(csv.DictReader(io.StringIO(render(compare_report, "csv"))))
    runs = {r["name"]: r for r in data["runs"]}
    assert data["baseline"] == "fedavg" and "delta_vs_baseline" not in runs["fedavg"]
    leaves = sum(_count_leaves({k: v for k, v in s.items() if k not in ("round", "file", "models", "client_round")})
                 for r in data["runs"] for s in r["snapshots"].values())
    assert len(rows) == leaves > 100
    deltas = 0
    for row in rows:
        run = runs[row["run"]]
        expected = _json_leaf(run["snapshots"][row["snapshot"]], row)
        got = _csv_value(row["value"])
        assert got == (float(expected) if isinstance(expected, (int, float)) else expected), row
        assert int(row["round"]) == run["snapshots"][row["snapshot"]]["round"]
        if row["delta_vs_baseline"]:
            deltas += 1
            assert float(row["delta_vs_baseline"]) == _json_leaf(run["delta_vs_baseline"][row["snapshot"]], row)
    assert deltas > 50
    fedcmi = runs["fedcmi"]
    assert fedcmi["snapshots"]["final"]["summary"]["fused"]["accuracy"] == pytest.approx(8 / 9)
    assert fedcmi["delta_vs_baseline"]["final"]["per_class"]["b"]["recall"]["fused"] == pytest.approx(1 / 3)
    assert fedcmi["snapshots"]["final"]["per_class"]["c"]["temperature"] == pytest.approx(0.6)
    assert fedcmi["snapshots"]["final"]["summary"]["fused"]["fused_minus_path"] is None  # NaN -> null


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """title -> body rows (cells) of every `### title` table."""
    tables = {}
    for block in text.split("\n### ")[1:]:
        title, *lines = block.split("\n")
        rows = [line for line in lines if line.startswith("|")]
        tables[title] = [[c.strip().strip("*") for c in r.strip("|").split(" | ")] for r in rows[2:]]  # bold = best
    return tables


def test_markdown_has_every_table_and_agrees_with_json(compare_report):
    tables = build_tables(compare_report, per_class=True, per_client=True)
    md = _markdown_tables(render(compare_report, "markdown", per_class=True, per_client=True))
    assert list(md) == [t.title for t in tables]
    assert [len(rows) for rows in md.values()] == [len(t.rows) for t in tables]
    data = json.loads(render(compare_report, "json"))
    base, other = data["runs"]
    label_to_metric = {v: k for k, v in METRIC_LABELS.items()}
    summary = md["Fairness summary · test-final (last round)"]
    checked = 0
    for path, label, base_cell, other_cell, delta_cell in summary:
        metric = label_to_metric[label]
        b = base["snapshots"]["final"]["summary"][path][metric]
        o = other["snapshots"]["final"]["summary"][path][metric]
        d = other["delta_vs_baseline"]["final"]["summary"][path].get(metric)
        if metric == "worst_class":
            assert (base_cell, other_cell, delta_cell) == (b, o, "—")
            continue
        signed = metric == "fused_minus_path"
        assert base_cell == (f"{100 * b:+.1f}" if signed else f"{100 * b:.1f}")
        assert other_cell == (f"{100 * o:+.1f}" if signed else f"{100 * o:.1f}")
        assert delta_cell == f"{100 * d:+.1f}"
        checked += 1
    assert checked == 5 * 6 + 4  # 6 numeric metrics per path, plus fused − path for the 4 other paths
    text = render(compare_report, "markdown")
    # the best run of a row is bold: fedcmi's fused accuracy, fedavg's lower fused recall std; equal rows none
    assert "| fused | accuracy | 77.8 | **88.9** | +11.1 |" in text
    assert "| fused | recall std | **20.8** | 23.6 | +2.8 |" in text
    assert "| fused | worst recall | 50.0 | 50.0 | +0.0 |" in text
    fused = md["Per-class recall · fused · test-final (last round)"]
    assert fused == [["a", "4", "100.0", "100.0", "+0.0"], ["b", "3", "66.7", "100.0", "+33.3"],
                     ["c", "3", "50.0", "50.0", "+0.0"]]


def test_markdown_sections_follow_the_flags(toy):
    report = build_report(toy.ws, ["fedavg"])
    bare = _markdown_tables(render(report, "markdown"))
    assert [t.split(" · ")[0] for t in bare] == ["Runs", "Fairness summary", "Fairness summary"]
    full = _markdown_tables(render(report, "markdown", per_class=True, per_client=True))
    assert len(full) == 1 + 2 * 4


class HtmlScan(HTMLParser):
    """Collects a page's images, table captions, tags and non-inline URLs."""

    def __init__(self):
        super().__init__()
        self.images, self.captions, self.tags, self.urls = [], [], [], []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        for name in ("src", "href"):
            if name in attrs and not attrs[name].startswith(("data:", "#")):
                self.urls.append(attrs[name])
        self._in_caption = tag == "caption"

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)


def test_html_of_a_run_without_predictions_says_incomplete(toy):
    write_run(toy.ws, "dead", RunSpec(status="failed", rounds_done=0, metrics=[]))
    calls = []
    text = render(build_report(toy.ws, ["dead"]), "html", progress=lambda done, total: calls.append((done, total)))
    # curves, recall bars, balance, method dynamics, heatmap, client accuracy were tried; only the heatmap exists
    assert calls == [(i, 6) for i in range(1, 7)]
    scan = HtmlScan()
    scan.feed(text)
    assert '<div class="incomplete">dead: INCOMPLETE: run status is &#x27;failed&#x27;' in text
    assert scan.tags.count("svg") == 1 and not scan.images  # only the partition heatmap, inline SVG
    assert scan.captions == ["Runs"]


def test_nan_is_null_in_json_and_empty_in_csv(toy):
    report = build_report(toy.ws, ["fedavg"], snapshots=("final",), paths=["fused"])
    data = json.loads(render(report, "json"))
    assert data["runs"][0]["snapshots"]["final"]["summary"]["fused"]["fused_minus_path"] is None
    row = next(r for r in csv.DictReader(io.StringIO(render(report, "csv"))) if r["metric"] == "fused_minus_path")
    assert row["value"] == "" and row["delta_vs_baseline"] == ""
    assert not any(math.isnan(v) for v in [data["runs"][0]["snapshots"]["final"]["summary"]["fused"]["accuracy"]])


def test_compare_deltas_are_toned_better_or_worse(compare_report):
    summary = next(t for t in build_tables(compare_report, per_class=False, per_client=False)
                   if t.key == "compare.summary.final")
    tones = {(row[0].text, row[1].text): (row[-1].text, row[-1].tone) for row in summary.rows}
    assert tones["fused", "accuracy"] == ("+11.1", "better")
    assert tones["fused", "recall std"] == ("+2.8", "worse")  # more spread over classes
    assert tones["audio_only", "fused − path"] == ("+11.1", None)  # a signed gap has no better direction
    assert tones["visual_only", "recall std"] == ("-14.2", "better")
    assert tones["fused", "worst recall"] == ("+0.0", None)
    assert tones["fused", "worst class"] == ("—", None)
