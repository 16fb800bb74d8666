"""`cmi prepare` on fixtures in the real layouts: real metadata lines, synthetic media under the
real names, with the datasets' known bad files imitated."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import Workspace
from pipelines.datasets import ave, cremad, crisismmd
from pipelines.extractors.audio import AudioParams, audio_features, fit_duration, load_audio
from pipelines.prepare import FeatureOptions, RunOptions, prepare_listing
from pipelines.shards import modality_specs, read_table, tensor_column
from tests.datasets.fixtures import ave_root, cremad_clip, crisismmd_root, matching_lines, requires_reference

pytestmark = requires_reference
SMALL = FeatureOptions(image_size=32, frames=2)
ACCEPT_ALL = RunOptions(shard_size=4, max_reject_fraction=1.0)


def by_id(table, column):
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist()))


def rejects_of(artifact):
    return {(r["id"], r["modality"]): r for r in pq.read_table(artifact.path / "rejects.parquet").to_pylist()}


def test_cremad_known_bad_clips(tmp_path):
    root = tmp_path / "CREMA-D"
    clips = {
        "1076_MTI_NEU_XX": {"audio": "silent"},      # tiny, no audio
        "1076_MTI_SAD_XX": {"audio": "silent"},
        "1064_TIE_SAD_XX": {"video": "corrupt"},     # no duration
        "1064_IEO_DIS_MD": {"audio": "long"},        # about a minute long: cut to 3 s, kept
        "1001_DFA_ANG_XX": {},
        "1001_DFA_DIS_XX": {"audio": "truncated"},
        "1002_DFA_FEA_XX": {"video": "missing"},
        "1003_DFA_HAP_XX": {"audio": "missing", "video": "missing"},
        "1004_DFA_NEU_XX": {"video": "empty"},
        "1091_WSI_SAD_XX": {},
    }
    for clip, states in clips.items():
        cremad_clip(root, clip, **states)
    listing = cremad.load(root, clips=clips, val_fraction=0.0)
    art = prepare_listing(Workspace(tmp_path / "ws"), listing, SMALL, ACCEPT_ALL).artifact
    table = read_table(art)
    audio, visual = by_id(table, "audio_present"), by_id(table, "visual_present")
    assert "1003_DFA_HAP_XX" not in audio and len(audio) == 9
    assert [c for c in audio if not audio[c]] == ["1001_DFA_DIS_XX", "1076_MTI_NEU_XX", "1076_MTI_SAD_XX"]
    assert [c for c in visual if not visual[c]] == ["1002_DFA_FEA_XX", "1004_DFA_NEU_XX", "1064_TIE_SAD_XX"]
    rejects = rejects_of(art)
    assert rejects[("1076_MTI_NEU_XX", "audio")]["reason"].startswith("empty audio")
    assert rejects[("1001_DFA_DIS_XX", "audio")]["reason"].startswith("truncated audio")
    assert rejects[("1004_DFA_NEU_XX", "visual")]["reason"].startswith("empty file")
    assert rejects[("1002_DFA_FEA_XX", "visual")]["reason"].startswith("missing file")
    assert "1064_TIE_SAD_XX" in rejects[("1064_TIE_SAD_XX", "visual")]["reason"]
    assert rejects[("1003_DFA_HAP_XX", "audio")]["sample_dropped"] and rejects[("1003_DFA_HAP_XX", "visual")]["sample_dropped"]
    assert len(rejects) == 8
    assert art.manifest["rejects"] == 1 and art.manifest["samples_with_rejects"] == 7


def test_ave_event_windows_duplicates_and_bad_videos(tmp_path):
    root = tmp_path / "AVE_Dataset"
    ave_root(root, {
        "RUhOCu3LNXM": "ok",        # train, Church bell 0-10
        "MH3m4AwEcRY": "ok",        # train, Church bell 6-8
        "-ccciEuH9FE": "ok",        # train twice (male, then female speech): first kept
        "00N83yxKYUI": "ok",        # train and val
        "VWi2ENBuTbw": "ok",        # train, empty window 0-0
        "9GmZFnAJsjE": "no-audio",  # test, Frying (food)
        "-Fch7ZrYmWA": "missing",   # val, Frying (food)
        "K5AE5C5FUQk": "corrupt",   # test, Church bell 5-10
    })
    listing = ave.load(root)
    assert listing.classes == ["Church bell", "Male speech, man speaking", "Female speech, woman speaking", "Frying (food)"]
    art = prepare_listing(Workspace(tmp_path / "ws"), listing, SMALL, ACCEPT_ALL).artifact
    table = read_table(art)
    ids = table.column("id").to_pylist()
    assert ids == ["RUhOCu3LNXM", "MH3m4AwEcRY", "-ccciEuH9FE", "00N83yxKYUI", "00N83yxKYUI@val", "9GmZFnAJsjE"]
    assert table.column("split").to_pylist() == ["train"] * 4 + ["val", "test"]
    assert by_id(table, "audio_present")["9GmZFnAJsjE"] is False and by_id(table, "visual_present")["9GmZFnAJsjE"]
    spec = {s.name: s for s in modality_specs(art)}
    assert spec["audio"].shape == (257, 454) and spec["audio"].params["duration"] == 10.0

    # the event window: frames at 6.5 s and 7.5 s (grey 10 * second + 20), audio cut to [6, 8] s then tiled
    frames = tensor_column(table, "visual")[ids.index("MH3m4AwEcRY")]
    assert np.abs(frames.reshape(2, -1).mean(axis=1) - [80, 90]).max() < 4
    video = root / "AVE" / "MH3m4AwEcRY.mp4"
    expected = audio_features(fit_duration(load_audio(video, 16000, 6.0, 8.0), 16000, 10.0)[None], AudioParams(duration=10.0))
    np.testing.assert_array_equal(tensor_column(table, "audio")[ids.index("MH3m4AwEcRY")], expected[0])

    rejects = rejects_of(art)
    assert "duplicate video id in train" in rejects[("-ccciEuH9FE", None)]["reason"]
    assert rejects[("VWi2ENBuTbw", None)]["reason"].startswith("empty event window [0, 0] s")
    assert rejects[("9GmZFnAJsjE", "audio")]["reason"].startswith("no audio track")
    assert rejects[("-Fch7ZrYmWA", "audio")]["sample_dropped"] and rejects[("K5AE5C5FUQk", "visual")]["sample_dropped"]
    assert art.manifest["rejects"] == 4 and art.manifest["samples_with_rejects"] == 5
    assert art.manifest["counts"] == {"train": 4, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    from tests.extractors.tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def crisis_fixture(root):
    train = "task_informative_text_img_train.tsv"
    selection = {
        train: sorted(set(
            list(range(3))
            + matching_lines(train, lambda line: ".png\t" in line)
            + matching_lines(train, lambda line: '"' in line.split("\t")[3])
            + matching_lines(train, lambda line: "/5_9_2017/" in line)
        )),
        "task_informative_text_img_dev.tsv": [0, 1],
        "task_informative_text_img_test.tsv": [0, 1],
    }
    return crisismmd_root(root, selection, missing=1)


def test_crisismmd_image_and_tweet(tmp_path, text_model):
    release = tmp_path / "CrisisMMD_v2.0"
    rows = crisis_fixture(release)
    listing = crisismmd.load(release)
    features = FeatureOptions(image_size=32, text_model=str(text_model))
    art = prepare_listing(Workspace(tmp_path / "ws"), listing, features, ACCEPT_ALL).artifact
    spec = {s.name: s for s in modality_specs(art)}
    assert spec["image"].kind == "image" and spec["image"].shape == (32, 32, 3)
    assert spec["tweet"].kind == "embedding" and spec["tweet"].shape == (32,) and spec["tweet"].params["max_length"] == 40
    table = read_table(art)
    assert table.column("id").to_pylist() == [r["image_id"] for r in rows]
    assert table.column("group").to_pylist() == [r["event_name"] for r in rows]
    missing = rows[0]["image_id"]
    assert by_id(table, "image_present")[missing] is False and by_id(table, "tweet_present")[missing]
    assert rejects_of(art)[(missing, "image")]["reason"].startswith("missing file")
    assert all(by_id(table, "image_present")[r["image_id"]] for r in rows[1:])  # png and jpg alike
    texts = by_id(table, "text")
    first = texts[rows[0]["image_id"]]
    assert "We’re capturing wildfire response" in first and "â€" not in first and "https://" not in first
    quoted = next(r for r in rows if '"' in r["tweet_text"])
    assert '"' in texts[quoted["image_id"]]
    embeddings = tensor_column(table, "tweet")
    assert np.isfinite(embeddings).all() and np.abs(embeddings).sum(axis=1).min() > 0


def test_crisismmd_without_text_model_says_how_to_get_one(tmp_path):
    from pipelines.errors import CmiError

    release = tmp_path / "CrisisMMD_v2.0"
    crisis_fixture(release)
    listing = crisismmd.load(release)
    with pytest.raises(CmiError, match="--text-model PATH.*save_pretrained.*--modalities image"):
        prepare_listing(Workspace(tmp_path / "ws"), listing, SMALL)
    art = prepare_listing(Workspace(tmp_path / "ws"), listing.select(["image"]), SMALL, ACCEPT_ALL).artifact
    assert [s.name for s in modality_specs(art)] == ["image"]
    assert "text" in read_table(art).column_names  # the cleaned text is kept all the same
    assert art.manifest["rejects"] == 1  # the tweet with no image has nothing left


def test_crisismmd_damage_with_image_embeddings(tmp_path):
    from tests.extractors.tiny_models import save_tiny_vit

    release = tmp_path / "CrisisMMD_v2.0"
    crisismmd_root(release, {f"task_damage_{s}.tsv": [0, 1, 2] for s in ("train", "dev", "test")})
    model = save_tiny_vit(tmp_path / "vit")
    listing = crisismmd.load(release, task="damage")
    art = prepare_listing(Workspace(tmp_path / "ws"), listing, FeatureOptions(image_model=str(model))).artifact
    (spec,) = modality_specs(art)
    assert spec.name == "image" and spec.kind == "embedding" and spec.shape == (32,)
    assert spec.params["model"] == str(model.resolve()) and len(spec.params["model_digest"]) == 16
    table = read_table(art)
    assert "text" not in table.column_names and table.num_rows == 9
    assert art.manifest["classes"] == ["little_or_no_damage", "mild_damage", "severe_damage"]
