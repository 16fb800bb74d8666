import re

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace
from pipelines.datasets.base import DATA_ROOT_ENV
from tests.prepare.conftest import CLIPS

runner = CliRunner()
SMALL = ["--image-size", "32", "--frames", "2", "--workers", "1"]


def cmi(*args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    return result.exit_code, re.sub(r"\s+", " ", result.output)


def test_missing_root_shows_the_expected_layout(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    code, out = cmi("-w", tmp_path, "prepare", "cremad")
    assert code == 2
    assert f"no dataset root given: pass --root DIR or set {DATA_ROOT_ENV}" in out
    assert "AudioWAV/1001_DFA_ANG_XX.wav" in out and "VideoFlash/1001_DFA_ANG_XX.flv" in out
    code, out = cmi("-w", tmp_path, "prepare", "ave", "--root", tmp_path)
    assert code == 2 and "Annotations.txt, trainSet.txt, valSet.txt, testSet.txt not found" in out
    assert "AVE/<VideoID>.mp4" in out
    code, out = cmi("-w", tmp_path, "prepare", "crisismmd", "--root", tmp_path / "x", env={DATA_ROOT_ENV: "/elsewhere"})
    assert code == 2 and "does not exist" in out and "crisismmd_datasplit_all/" in out


def test_options_that_do_not_apply_are_refused(tmp_path):
    code, out = cmi("-w", tmp_path, "prepare", "ave", "--root", tmp_path, "--task", "damage", "--seed", "3")
    assert code == 2 and "--seed, --task do(es) not apply to ave" in out
    code, out = cmi("-w", tmp_path, "prepare", "imagenet")
    assert code == 2 and "imagenet" in out


def test_help_documents_every_option_with_its_default():
    code, out = cmi("prepare", "--help")
    assert code == 0
    for option, default in [("--split", "literature"), ("--val-fraction", "0.1"), ("--clips", "480"),
                            ("--imbalance", "0.6"), ("--audio-features", "stft"), ("--frames", "3"),
                            ("--image-size", "112"), ("--shard-size", "128"), ("--max-reject-fraction", "0.05"),
                            ("--task", "informative"), ("--label-column", "label"), ("--text-max-length", "40")]:
        assert re.search(re.escape(option) + r" .*?\[default: " + re.escape(default) + r"[\];]", out), option
    for option in ("--root", "--name", "--modalities", "--modality", "--agreed-labels", "--face-crop", "--image-model",
                   "--text-model", "--workers", "--force", "--quiet", "--test-fraction"):
        assert option in out


def test_synthetic_through_the_cli(tmp_path, synthetic_raw):
    code, out = cmi("-w", tmp_path / "ws", "prepare", "synthetic", "--root", synthetic_raw, "--clips", CLIPS, *SMALL)
    assert code == 0, out
    assert "prepared samples" in out and "train │ 24 │ 24 │ 24 │ 24" in out
    assert "dataset synthetic at" in out and "next: cmi partition" in out
    assert Workspace(tmp_path / "ws").resolve("dataset").manifest["counts"] == {"train": 24, "val": 0, "test": 6}
    code, out = cmi("-w", tmp_path / "ws", "prepare", "synthetic", "--root", synthetic_raw, "--clips", CLIPS, *SMALL)
    assert code == 0 and "already prepared" in out
    code, out = cmi("-w", tmp_path / "ws", "prepare", "synthetic", "--root", synthetic_raw, "--clips", CLIPS, "-q", *SMALL)
    assert code == 0 and out.strip() == ""


@pytest.mark.slow
def test_reject_fraction_sets_the_exit_code(tmp_path, synthetic_raw):
    """The full CREMA-D listing over a folder holding 30 of its clips: 7,412 samples are dropped
    (missing files), so the run fails until --max-reject-fraction allows it."""
    ws = tmp_path / "ws"
    code, out = cmi("-w", ws, "prepare", "cremad", "--root", synthetic_raw, *SMALL)
    assert code == 2
    assert "7412 of 7442 samples (99.6%) have rejects, more than --max-reject-fraction 0.05" in out
    assert "rejects: 7412 samples dropped, 7412 of 7442 with a reject" in out
    assert "audio │ missing file: … │ 7412" in out and "visual │ missing file: … │ 7412" in out
    rejects = pq.read_table(ws / "datasets" / "cremad" / "rejects.parquet")
    assert rejects.num_rows == 2 * 7412
    code, out = cmi("-w", ws, "prepare", "cremad", "--root", synthetic_raw, "--max-reject-fraction", "1", *SMALL)
    assert code == 0, out
    manifest = Workspace(ws).resolve("dataset").manifest
    assert manifest["rejects"] == 7412 and sum(manifest["counts"].values()) == CLIPS
