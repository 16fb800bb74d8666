import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import Workspace, load_artifact
from pipelines.datasets import cremad
from pipelines.errors import CmiError
from pipelines.extractors.audio import AudioParams, audio_features, fit_duration, load_audio
from pipelines.extractors.visual import VisualParams, extract_frames
from pipelines.prepare import (
    PLAN_FILE, REJECT_PARTS_DIR, FeatureOptions, RunOptions, TooManyRejects, build_listing, prepare_listing,
)
from pipelines.shards import modality_specs, read_table, tensor_column
from tests.prepare.conftest import CLIPS

SMALL = FeatureOptions(image_size=32, frames=2)


def prepare_synthetic(ws, raw, features=SMALL, name=None, **run):
    listing = build_listing(ws, "synthetic", raw, {"clips": CLIPS, "val_fraction": 0.25})
    return prepare_listing(ws, listing, features, RunOptions(**{"shard_size": 8, **run}), name=name)


def prepare_as_cremad(ws, raw, clips, **run):
    """Prepare the synthetic ``clips`` in ``raw`` with the CREMA-D loader (generation would
    repair files a test damaged on purpose)."""
    listing = cremad.load(raw, clips=clips, val_fraction=0.25)
    return prepare_listing(ws, listing, SMALL, RunOptions(**{"shard_size": 8, **run}))


def shard_stats(artifact):
    return {rel: (os.stat(artifact.path / rel).st_ino, os.stat(artifact.path / rel).st_mtime_ns)
            for rel in artifact.manifest["shards"]}


def test_synthetic_prepares_into_a_valid_dataset(tmp_path, synthetic_raw):
    ws = Workspace(tmp_path / "ws")
    result = prepare_synthetic(ws, synthetic_raw, FeatureOptions())
    art = load_artifact(result.artifact.path, "dataset", verify=True)
    m = art.manifest
    assert ws.resolve("dataset").path == art.path  # the latest dataset
    assert m["dataset"] == "synthetic" and m["classes"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    specs = {s.name: s for s in modality_specs(art)}
    assert specs["audio"].kind == "spectrogram" and specs["audio"].shape == (257, 136)  # 1 + 48000 // 353 frames
    assert specs["audio"].params == AudioParams().to_dict()
    assert specs["visual"].kind == "frames" and specs["visual"].shape == (3, 112, 112, 3)
    assert m["shards"] == [f"shards/part-{k:05d}.parquet" for k in range(4)]  # 30 samples, 8 per shard
    assert sum(m["counts"].values()) == CLIPS and m["rejects"] == 0 and m["samples_with_rejects"] == 0
    assert m["counts"] == {"train": 18, "val": 6, "test": 6}
    assert m["params"]["split"] == "literature" and m["params"]["synthetic"] == {"clips": 30, "imbalance": 0.6, "seed": 0, "shift": 0.0, "actors": None}
    assert pq.read_table(art.path / "rejects.parquet").num_rows == 0
    assert (art.path / PLAN_FILE).is_file() and not (art.path / REJECT_PARTS_DIR).exists()

    table = read_table(art)
    listing = cremad.load(synthetic_raw, clips=[c for c in table.column("id").to_pylist()])
    assert table.column("id").to_pylist() == [s.id for s in listing.samples]  # listing order
    assert table.column("label").to_pylist() == [s.label for s in listing.samples]
    assert table.column("group").to_pylist() == [s.id[:4] for s in listing.samples]
    assert all(table.column("audio_present").to_pylist()) and all(table.column("visual_present").to_pylist())
    # payloads are exactly what the extractors give for the same file
    clip = listing.samples[5].id
    audio = AudioParams()
    wave = fit_duration(load_audio(synthetic_raw / "AudioWAV" / f"{clip}.wav", 16000), 16000, 3.0)
    np.testing.assert_array_equal(tensor_column(table, "audio")[5], audio_features(wave[None], audio)[0])
    frames = extract_frames(synthetic_raw / "VideoFlash" / f"{clip}.flv", VisualParams())
    np.testing.assert_array_equal(tensor_column(table, "visual")[5], frames)


def test_same_inputs_give_byte_identical_shards(tmp_path, synthetic_raw):
    a = prepare_synthetic(Workspace(tmp_path / "a"), synthetic_raw).artifact
    b = prepare_synthetic(Workspace(tmp_path / "b"), synthetic_raw).artifact
    for rel in a.manifest["shards"] + ["rejects.parquet"]:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes()
    assert a.manifest["checksums"] == b.manifest["checksums"]
    # the shard size changes the files, not the data
    c = prepare_synthetic(Workspace(tmp_path / "c"), synthetic_raw, shard_size=13).artifact
    assert len(c.manifest["shards"]) == 3
    assert read_table(c).equals(read_table(a))


def test_finished_is_a_noop_and_other_params_need_force(tmp_path, synthetic_raw):
    ws = Workspace(tmp_path / "ws")
    first = prepare_synthetic(ws, synthetic_raw).artifact
    before = shard_stats(first)
    again = prepare_synthetic(ws, synthetic_raw)
    assert again.reused and shard_stats(again.artifact) == before
    # 5 clips per emotion: 1 from the literature test list, 4 from train, of which round(0.25 * 4) = 1 -> val
    assert again.summary.kept == again.summary.listed == {"train": 18, "val": 6, "test": 6}
    other = FeatureOptions(image_size=32, frames=1)
    with pytest.raises(CmiError, match="already exists .* --force .* --name NEW"):
        prepare_synthetic(ws, synthetic_raw, other)
    kept_aside = prepare_synthetic(ws, synthetic_raw, other, name="one-frame").artifact
    assert modality_specs(kept_aside)[1].shape == (1, 32, 32, 3) and ws.latest_name("dataset") == "one-frame"
    forced = prepare_synthetic(ws, synthetic_raw, other, force=True).artifact
    assert modality_specs(forced)[1].shape == (1, 32, 32, 3)
    # an unfinished prepare (no manifest yet) refuses other parameters too
    (forced.path / "manifest.json").unlink()
    with pytest.raises(CmiError, match="unfinished prepare with other inputs .* --force"):
        prepare_synthetic(ws, synthetic_raw)
    assert prepare_synthetic(ws, synthetic_raw, other).artifact.manifest["counts"] == {"train": 18, "val": 6, "test": 6}


def test_bad_media_become_rejects_and_single_losses_are_kept(tmp_path, raw_copy):
    ws = Workspace(tmp_path / "ws")
    clips = sorted(p.stem for p in (raw_copy / "AudioWAV").glob("*.wav"))
    no_audio, bad_video, gone, truncated = clips[0], clips[7], clips[12], clips[20]
    (raw_copy / "AudioWAV" / f"{no_audio}.wav").unlink()
    (raw_copy / "VideoFlash" / f"{bad_video}.flv").write_bytes(b"FLV\x01" + bytes(500))
    (raw_copy / "AudioWAV" / f"{gone}.wav").unlink()
    (raw_copy / "VideoFlash" / f"{gone}.flv").unlink()
    wav = raw_copy / "AudioWAV" / f"{truncated}.wav"
    wav.write_bytes(wav.read_bytes()[:3000])

    with pytest.raises(TooManyRejects, match="4 of 30 samples .*--max-reject-fraction 0.05") as exc:
        prepare_as_cremad(ws, raw_copy, clips=clips)
    assert exc.value.summary.dropped == 1 and exc.value.summary.affected == 4
    directory = ws.artifact_dir("dataset", "cremad")
    assert not (directory / "manifest.json").exists() and ws.latest_name("dataset") is None
    rejects = pq.read_table(directory / "rejects.parquet").to_pylist()
    by_key = {(r["id"], r["modality"]): r for r in rejects}
    assert set(by_key) == {(no_audio, "audio"), (bad_video, "visual"), (gone, "audio"), (gone, "visual"),
                           (truncated, "audio")}
    assert by_key[(no_audio, "audio")]["reason"].startswith("missing file")
    assert by_key[(no_audio, "audio")]["path"] == str(raw_copy / "AudioWAV" / f"{no_audio}.wav")
    assert "truncated" in by_key[(truncated, "audio")]["reason"]
    assert by_key[(bad_video, "visual")]["reason"]
    assert [r["sample_dropped"] for r in rejects if r["id"] == gone] == [True, True]
    assert not any(r["sample_dropped"] for r in rejects if r["id"] != gone)

    before = {p.name: p.stat().st_mtime_ns for p in (directory / "shards").iterdir()}
    result = prepare_as_cremad(ws, raw_copy, clips=clips, max_reject_fraction=0.2)
    assert result.shards_skipped == 4
    assert {p.name: p.stat().st_mtime_ns for p in (directory / "shards").iterdir()} == before
    m = result.artifact.manifest
    assert m["rejects"] == 1 and m["samples_with_rejects"] == 4 and sum(m["counts"].values()) == CLIPS - 1
    table = read_table(result.artifact)
    ids = table.column("id").to_pylist()
    assert gone not in ids
    audio_present = dict(zip(ids, table.column("audio_present").to_pylist()))
    visual_present = dict(zip(ids, table.column("visual_present").to_pylist()))
    assert not audio_present[no_audio] and visual_present[no_audio]
    assert audio_present[bad_video] and not visual_present[bad_video]
    assert not audio_present[truncated]
    row = ids.index(no_audio)
    assert not tensor_column(table, "audio")[row].any()  # absent payloads are zeros
    assert tensor_column(table, "visual")[row].any()


def test_modality_subset_and_option_errors(tmp_path, synthetic_raw):
    ws = Workspace(tmp_path / "ws")
    listing = build_listing(ws, "synthetic", synthetic_raw, {"clips": CLIPS}).select(["audio"])
    art = prepare_listing(ws, listing, SMALL, name="audio-only").artifact
    assert [s.name for s in modality_specs(art)] == ["audio"]
    assert "visual" not in read_table(art).column_names
    with pytest.raises(CmiError, match="--face-crop applies to video frames"):
        prepare_listing(ws, listing, FeatureOptions(face_crop=True), name="x")
    with pytest.raises(CmiError, match="no modality 'video'; choose among audio, visual"):
        build_listing(ws, "synthetic", synthetic_raw, {"clips": CLIPS}).select(["video"])
    with pytest.raises(CmiError, match="--task do\\(es\\) not apply to cremad"):
        build_listing(ws, "cremad", synthetic_raw, {"task": "damage"})
    with pytest.raises(CmiError, match="--shard-size"):
        RunOptions(shard_size=0)


def test_missing_modality_folder_suggests_dropping_it(tmp_path, raw_copy):
    ws = Workspace(tmp_path / "ws")
    for f in (raw_copy / "VideoFlash").iterdir():
        f.unlink()
    (raw_copy / "VideoFlash").rmdir()
    clips = [p.stem for p in (raw_copy / "AudioWAV").glob("*.wav")]
    with pytest.raises(CmiError, match="VideoFlash/ \\(modality visual\\) is missing; to prepare without it pass --modalities audio"):
        prepare_as_cremad(ws, raw_copy, clips)


@pytest.mark.slow
def test_workers_give_the_same_shards(tmp_path, synthetic_raw):
    one = prepare_synthetic(Workspace(tmp_path / "one"), synthetic_raw).artifact
    two = prepare_synthetic(Workspace(tmp_path / "two"), synthetic_raw, workers=2).artifact
    assert one.manifest["checksums"] == two.manifest["checksums"]
