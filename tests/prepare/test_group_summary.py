"""The dataset manifest and the printed summary name each split's groups, the groups splits share,
and the modalities' kinds and shapes (a real `cmi prepare` of a tiny manifest dataset)."""

import re

from PIL import Image
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace

SITES = [f"site-{k}" for k in range(6)]


def tiny_manifest(folder, with_groups=True):
    """6 sites x (8 train + 2 test) image samples, two classes told apart by colour."""
    (folder / "media").mkdir(parents=True)
    rows = []
    for site in SITES:
        for i in range(10):
            sample = f"{site}-{i}"
            label = "ab"[i % 2]
            Image.new("RGB", (20, 16), (200, 30, 30) if label == "a" else (30, 200, 30)).save(folder / "media" / f"{sample}.png")
            group = f",{site}" if with_groups else ""
            rows.append(f"{sample},{label},{'train' if i < 8 else 'test'}{group},media/{sample}.png")
    header = "id,label,split" + (",group" if with_groups else "") + ",photo"
    (folder / "manifest.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return folder / "manifest.csv"


def prepare(ws, csv, *args):
    result = CliRunner().invoke(app, ["-w", str(ws), "prepare", "manifest", "--root", str(csv), "--image-size", "32",
                                      "--workers", "1", *args], env={"COLUMNS": "200"})
    return result.exit_code, re.sub(r"\s+", " ", result.output)


def test_manifest_records_groups_per_split_and_the_summary_shows_them(tmp_path):
    csv = tiny_manifest(tmp_path / "data")
    ws = tmp_path / "ws"
    code, out = prepare(ws, csv, "--val-by", "group", "--val-fraction", "0.2", "--name", "by-group")
    assert code == 0, out
    m = Workspace(ws).resolve("dataset").manifest
    assert m["params"]["val_by"] == "group"
    groups = m["groups"]
    assert len(groups["val"]) == 1 and groups["train"] == sorted(set(SITES) - set(groups["val"]))
    assert groups["test"] == SITES  # read back from the shards, sorted
    assert m["group_counts"] == {"train": 5, "val": 1, "test": 6} and m["group_name"] == "group"
    assert m["shared_groups"] == {"train/val": 0, "train/test": 5, "val/test": 1}
    assert m["counts"] == {"train": 40, "val": 8, "test": 12}
    # the summary: a groups column, no val note, a test note; the modalities' kinds and shapes
    assert "train │ 40 │ 40 │ 40 │ 5" in out and "val │ 8 │ 8 │ 8 │ 1" in out
    assert "val shares" not in out and "test shares 5 groups with train" in out
    assert "photo │ image │ 32×32×3 │ uint8" in out

    code, out = prepare(ws, csv, "--name", "random")  # the default: stratified, val shares every site
    assert code == 0, out
    m = Workspace(ws).resolve("dataset").manifest
    assert m["params"]["val_by"] == "random" and m["shared_groups"]["train/val"] == len(m["groups"]["val"]) > 1
    n = m["shared_groups"]["train/val"]
    assert (f"val shares {n} groups with train: validation is not group-independent (the model picked as best on "
            "val may just know those groups); --val-by group fixes it") in out


def test_no_group_entries_without_groups_and_errors_name_the_fix(tmp_path):
    csv = tiny_manifest(tmp_path / "data", with_groups=False)
    ws = tmp_path / "ws"
    code, out = prepare(ws, csv, "--val-by", "group")
    assert code == 2 and "manifest.csv has no group column" in out and "add a `group` column" in out
    code, out = prepare(ws, csv)
    assert code == 0, out
    m = Workspace(ws).resolve("dataset").manifest
    assert not {"groups", "group_counts", "shared_groups", "group_name"} & set(m)
    assert "shares" not in out and "photo │ image │ 32×32×3 │ uint8" in out


def test_help_lists_val_by_choices_and_the_new_examples():
    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    out = re.sub(r"\s+", " ", result.output)
    assert result.exit_code == 0
    assert re.search(r"--val-by \[random\|group\]", out)
    assert "[default: random; group with --split actor]" in out
    assert "cmi prepare cremad --root ~/data/CREMA-D --val-by group" in out
    assert "cmi prepare synthetic --shift 1 --split actor" in out
    for option, choices in [("--split", "literature|actor"), ("--task", "informative|humanitarian|damage"),
                            ("--label-column", "label|label_image|label_text"), ("--audio-features", "stft|logmel")]:
        assert f"{option} [{choices}]" in out, option
