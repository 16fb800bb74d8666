"""The bring-your-own-dataset example (examples/manifest) prepares as its README says."""

import importlib.util
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace
from pipelines.shards import modality_specs, read_table, tensor_column

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "manifest"


def example_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "example"
    folder.mkdir()
    shutil.copy(EXAMPLE / "manifest.csv", folder)
    spec = importlib.util.spec_from_file_location("make_media", EXAMPLE / "make_media.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(folder)
    return folder


def test_example_manifest_prepares_with_real_missing_modalities(tmp_path):
    folder = example_copy(tmp_path)
    (folder / "media" / "siren-test-02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # a broken file
    result = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "prepare", "manifest", "--root",
                                      str(folder / "manifest.csv"), "--image-size", "32", "--workers", "1",
                                      "--max-reject-fraction", "0.1"])
    assert result.exit_code == 0, result.output
    art = Workspace(tmp_path / "ws").resolve("dataset")
    assert art.manifest["classes"] == ["bird", "siren"]
    assert art.manifest["counts"] == {"train": 16, "val": 4, "test": 4}
    assert [(s.name, s.kind) for s in modality_specs(art)] == [("audio", "spectrogram"), ("photo", "image")]
    table = read_table(art)
    ids = table.column("id").to_pylist()
    photo = dict(zip(ids, table.column("photo_present").to_pylist()))
    audio = dict(zip(ids, table.column("audio_present").to_pylist()))
    assert [i for i in ids if not photo[i]] == ["bird-train-03", "siren-test-02"]
    assert [i for i in ids if not audio[i]] == ["siren-train-06"]
    assert set(table.column("group").to_pylist()) == {"site-a", "site-b"}
    # only the broken file is a reject; the empty cells are absent modalities, not rejects
    rejects = pq.read_table(art.path / "rejects.parquet").to_pylist()
    assert [(r["id"], r["modality"], r["sample_dropped"]) for r in rejects] == [("siren-test-02", "photo", False)]
    # the classes are told apart by the photos' colour: green birds, red sirens
    pixels = tensor_column(table, "photo").reshape(len(ids), -1, 3).mean(axis=1)
    labels = table.column("label").to_numpy()
    present = table.column("photo_present").to_numpy(zero_copy_only=False)
    assert (pixels[present & (labels == 0), 1] > pixels[present & (labels == 0), 0]).all()
    assert (pixels[present & (labels == 1), 0] > pixels[present & (labels == 1), 1]).all()
