from collections import Counter

import pytest

from pipelines.datasets import cremad
from pipelines.datasets.base import DATA_ROOT_ENV
from pipelines.errors import CmiError
from tests.datasets.fixtures import REFERENCE, requires_reference


@pytest.fixture
def root(tmp_path):
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "VideoFlash").mkdir()
    return tmp_path


def test_literature_split_counts_classes_and_stratified_val(root):
    listing = cremad.load(root)
    assert listing.classes == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert len(listing.samples) == 7442
    splits = Counter(s.split for s in listing.samples)
    # per class round(0.1 * n_train): ANG 117, HAP 115, DIS 114, FEA 114, SAD 113, NEU 97
    assert splits == {"train": 6698 - 670, "val": 670, "test": 744}
    val = Counter(listing.classes[s.label] for s in listing.samples if s.split == "val")
    assert val == {"ANG": 117, "HAP": 115, "DIS": 114, "FEA": 114, "SAD": 113, "NEU": 97}
    ids = [s.id for s in listing.samples]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first = listing.samples[0]
    assert first.id == "1001_DFA_ANG_XX" and first.group == "1001" and listing.classes[first.label] == "ANG"
    assert first.media == {"audio": str(root / "AudioWAV" / "1001_DFA_ANG_XX.wav"),
                           "visual": str(root / "VideoFlash" / "1001_DFA_ANG_XX.flv")}
    # the label is the intended emotion of the clip name, everywhere
    assert all(listing.classes[s.label] == cremad.parse_clip(s.id)["emotion"] for s in listing.samples)


def test_val_carve_is_seeded(root):
    a = [s.split for s in cremad.load(root, seed=0).samples]
    b = [s.split for s in cremad.load(root, seed=0).samples]
    c = [s.split for s in cremad.load(root, seed=1).samples]
    assert a == b and a != c
    no_val = cremad.load(root, val_fraction=0.0)
    assert Counter(s.split for s in no_val.samples) == {"train": 6698, "test": 744}


def test_actor_split_is_disjoint_with_documented_fractions(root):
    listing = cremad.load(root, split="actor", seed=3)
    actors = {split: {s.group for s in listing.samples if s.split == split} for split in ("train", "val", "test")}
    assert [len(actors[s]) for s in ("train", "val", "test")] == [73, 9, 9]
    assert not (actors["train"] & actors["val"]) and not (actors["train"] & actors["test"]) and not (actors["val"] & actors["test"])
    assert listing.info == {"split": "actor", "val_by": "group", "val_fraction": 0.1, "test_fraction": 0.1, "seed": 3}
    other = cremad.load(root, split="actor", seed=4)
    assert {s.group for s in other.samples if s.split == "test"} != actors["test"]
    with pytest.raises(CmiError, match="--test-fraction"):
        cremad.load(root, split="actor", val_fraction=0.5, test_fraction=0.5)


def test_clip_subset_and_unknown_clip(root):
    listing = cremad.load(root, clips={"1091_WSI_SAD_XX", "1001_DFA_ANG_XX"})
    assert [s.id for s in listing.samples] == ["1001_DFA_ANG_XX", "1091_WSI_SAD_XX"]
    with pytest.raises(CmiError, match="not CREMA-D clips"):
        cremad.load(root, clips={"9999_XXX_ANG_XX"})


def test_missing_or_wrong_root_shows_the_layout(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(CmiError, match=f"pass --root DIR or set {DATA_ROOT_ENV}") as exc:
        cremad.load(None)
    assert "AudioWAV/1001_DFA_ANG_XX.wav" in str(exc.value)
    with pytest.raises(CmiError, match="does not exist"):
        cremad.load(tmp_path / "nope")
    with pytest.raises(CmiError, match="neither AudioWAV/ nor VideoFlash/") as exc:
        cremad.load(tmp_path)
    assert "VideoFlash/1001_DFA_ANG_XX.flv" in str(exc.value)
    (tmp_path / "AudioWAV").mkdir()
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert cremad.load(None).root == tmp_path.resolve()


@requires_reference
def test_shipped_split_is_the_reference_byte_for_byte():
    import importlib.resources

    data = importlib.resources.files("pipelines") / "data"
    for shipped, real in (("train", "split-train"), ("test", "split-test"), ("stat", "split-stat")):
        content = (data / f"cremad_split_{shipped}.csv").read_bytes()
        assert content == (REFERENCE / "cremad" / f"{real}.csv").read_bytes()
    assert (data / "cremad_split_stat.csv").read_bytes().startswith(b"\xef\xbb\xbf")  # BOM
    assert b"\r\n" in (data / "cremad_split_train.csv").read_bytes()  # CRLF


@requires_reference
def test_literature_clips_are_the_released_clips():
    lines = (REFERENCE / "cremad" / "SentenceFilenames.csv").read_text().splitlines()[1:]
    released = {line.split(",")[1].strip('"') for line in lines}
    listed = {clip for rows in cremad.literature_split().values() for clip, _ in rows}
    assert listed == released and len(listed) == 7442
