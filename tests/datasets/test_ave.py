import shutil
from collections import Counter

import pytest

from pipelines.datasets import ave
from pipelines.errors import CmiError
from tests.datasets.fixtures import REFERENCE, requires_reference

FILES = ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt")


@pytest.fixture
def real_root(tmp_path):
    for name in FILES:
        shutil.copy(REFERENCE / "ave" / name, tmp_path / name)
    (tmp_path / "AVE").mkdir()
    return tmp_path


@requires_reference
def test_real_files_counts_duplicates_and_degenerate_window(real_root):
    listing = ave.load(real_root)
    assert len(listing.classes) == 28
    assert listing.classes[:2] == ["Church bell", "Male speech, man speaking"]  # Annotations.txt order
    assert "Frying (food)" in listing.classes and "Violin, fiddle" in listing.classes
    # 3339 train lines - 27 within-train duplicates - 1 empty window; 402 val - 1 duplicate; 402 test
    assert Counter(s.split for s in listing.samples) == {"train": 3311, "val": 401, "test": 402}
    reasons = Counter((r.split, r.reason.split(" (")[0]) for r in listing.rejects)
    assert reasons == {("train", "duplicate video id in train"): 27, ("val", "duplicate video id in val"): 1,
                       ("train", "empty event window [0, 0] s"): 1}
    assert all(r.sample_dropped and r.modality is None for r in listing.rejects)
    ids = [s.id for s in listing.samples]
    assert len(set(ids)) == len(ids)
    # 10 videos shared train/val and 8 shared train/test keep both lines, suffixed in the later split
    assert Counter(i.split("@")[1] for i in ids if "@" in i) == {"val": 10, "test": 8}
    assert all(s.group is None for s in listing.samples)


@requires_reference
def test_first_line_wins_within_a_split(real_root):
    listing = ave.load(real_root)
    by_id = {s.id: s for s in listing.samples}
    # trainSet.txt lists -ccciEuH9FE as male speech, then as female speech (same window)
    kept = by_id["-ccciEuH9FE"]
    assert listing.classes[kept.label] == "Male speech, man speaking" and kept.window == (5.0, 10.0)
    dup = next(r for r in listing.rejects if r.id == "-ccciEuH9FE")
    assert "'Female speech, woman speaking'" in dup.reason and "kept the first line" in dup.reason
    # 00N83yxKYUI: train (male) and val (female)
    assert listing.classes[by_id["00N83yxKYUI"].label] == "Male speech, man speaking"
    assert listing.classes[by_id["00N83yxKYUI@val"].label] == "Female speech, woman speaking"
    assert by_id["00N83yxKYUI@val"].media["audio"] == str(real_root / "AVE" / "00N83yxKYUI.mp4")


def test_parse_line_splits_on_ampersand_only():
    assert ave.parse_line("Baby cry, infant cry&abc&good&1&7") == ("Baby cry, infant cry", "abc", "good", 1.0, 7.0)
    assert ave.parse_line("Rock & roll (music)&x-y_z&good&0&10")[:2] == ("Rock & roll (music)", "x-y_z")
    with pytest.raises(ValueError):
        ave.parse_line("Bark&abc&good&1")


def test_crlf_header_and_malformed_lines(tmp_path):
    header = b"Category&VideoID&Quality&StartTime&EndTime\r\n"
    (tmp_path / "Annotations.txt").write_bytes(header + b"Frying (food)&a1&good&0&10\r\nBark&b2&good&2&5\r\n")
    (tmp_path / "trainSet.txt").write_bytes(b"Bark&b2&good&2&5\r\nFrying (food)&a1&good&0&10\r\nnot a line\r\n")
    (tmp_path / "valSet.txt").write_bytes(b"Goat&g3&good&0&10")  # no final newline, unknown category
    (tmp_path / "testSet.txt").write_bytes(b"Bark&b2&good&3&3\n")
    listing = ave.load(tmp_path)
    assert listing.classes == ["Frying (food)", "Bark"]
    assert [(s.id, s.label, s.window) for s in listing.samples] == [("b2", 1, (2.0, 5.0)), ("a1", 0, (0.0, 10.0))]
    assert [(r.id, r.split, r.reason.split(" (")[0].split(":")[0]) for r in listing.rejects] == [
        ("trainSet.txt line 3", "train", "malformed line"),
        ("g3", "val", "category 'Goat' is not in Annotations.txt"),
        ("b2", "test", "empty event window [3, 3] s"),
    ]
    assert listing.defaults == {"audio_duration": 10.0}


def test_missing_files_show_the_layout(tmp_path):
    (tmp_path / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n")
    with pytest.raises(CmiError, match="trainSet.txt, valSet.txt, testSet.txt not found") as exc:
        ave.load(tmp_path)
    assert "AVE/<VideoID>.mp4" in str(exc.value)
