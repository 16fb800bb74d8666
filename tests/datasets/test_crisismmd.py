import shutil
from collections import Counter

import pytest

from pipelines.datasets import crisismmd
from pipelines.errors import CmiError
from tests.datasets.fixtures import REFERENCE, requires_reference

pytestmark = requires_reference


@pytest.fixture
def real_root(tmp_path):
    """A CrisisMMD_v2.0 folder (inside tmp_path) holding every real split file there is."""
    release = tmp_path / "CrisisMMD_v2.0"
    (release / "data_image").mkdir(parents=True)
    shutil.copytree(REFERENCE / "crisismmd", release / "crisismmd_datasplit_all")
    return release


def test_informative_counts_groups_and_modalities(real_root):
    listing = crisismmd.load(real_root)
    assert listing.classes == ["informative", "not_informative"]
    assert [m.name for m in listing.modalities] == ["image", "tweet"]
    assert Counter(s.split for s in listing.samples) == {"train": 13608, "val": 2237, "test": 2237}
    assert not listing.rejects
    assert Counter(listing.classes[s.label] for s in listing.samples if s.split == "val") == {
        "informative": 1407, "not_informative": 830}
    assert len({s.group for s in listing.samples}) == 7
    ids = [s.id for s in listing.samples if s.split == "train"]
    assert len(set(ids)) == len(ids)
    first = listing.samples[0]
    assert first.id == "917791291823591425_0" and first.group == "california_wildfires"
    assert first.media == {"image": str(real_root / "data_image/california_wildfires/10_10_2017/917791291823591425_0.jpg")}


def test_quotes_are_text_not_csv_quoting_and_paths_are_verbatim(real_root):
    listing = crisismmd.load(real_root)
    texts = {s.id: s.text for s in listing.samples}
    quoted = [t for t in texts.values() if t.startswith('"California wildfires claim iconic')]
    assert quoted == ["\"California wildfires claim iconic 'Glass House' in Solano County\" via FOX NEWS "
                      "https://t.co/q1l2f7dMGn https://t.co/sDpGqwGrs7"]
    # mojibake is listed raw; prepare cleans it into the text column
    assert any("Californiaâ€™s" in t for t in texts.values())
    paths = [s.media["image"] for s in listing.samples]
    assert sum(p.endswith(".png") for p in paths) == 129 + 35 + 30
    assert any("/5_9_2017/" in p for p in paths)  # non-padded date folders, as listed


def test_root_above_the_release_folder_is_accepted(real_root):
    assert crisismmd.load(real_root.parent).root == real_root


def test_humanitarian_agreed_labels_and_label_column(real_root):
    listing = crisismmd.load(real_root, task="humanitarian", agreed=True)
    assert len(listing.classes) == 8
    assert Counter(s.split for s in listing.samples) == {"train": 6126, "val": 998, "test": 955}
    by_image = crisismmd.load(real_root, task="humanitarian", agreed=True, label_column="label_image")
    changed = sum(a.label != b.label for a, b in zip(listing.samples, by_image.samples))
    assert changed == (998 - 995) + (955 - 950) + (6126 - 6085)  # rows whose label != label_image
    with pytest.raises(CmiError, match="task_humanitarian_text_img_train.tsv not found"):
        crisismmd.load(real_root, task="humanitarian")  # the 'all' train file is not in the public copy


def test_damage_is_image_only_with_either_file_name(real_root):
    listing = crisismmd.load(real_root, task="damage")
    assert [m.name for m in listing.modalities] == ["image"] and not listing.has_text
    assert listing.classes == ["little_or_no_damage", "mild_damage", "severe_damage"]
    assert Counter(s.split for s in listing.samples) == {"train": 2468, "val": 529, "test": 529}
    with pytest.raises(CmiError, match="--agreed-labels"):
        crisismmd.load(real_root, task="damage", agreed=True)


def test_bad_rows_are_rejects_and_bad_options_errors(real_root):
    split_dir = real_root / "crisismmd_datasplit_all"
    path = split_dir / "task_informative_text_img_dev.tsv"
    lines = path.read_bytes().splitlines(keepends=True)
    fields = lines[1].split(b"\t")
    fields[5] = b"maybe"  # the label column
    broken = b"\t".join(fields)
    path.write_bytes(lines[0] + broken + b"only\ttwo\n" + lines[2])
    listing = crisismmd.load(real_root)
    val = [s for s in listing.samples if s.split == "val"]
    assert len(val) == 1
    assert sorted(r.reason.split(":")[0].split(" '")[0] for r in listing.rejects) == [
        "malformed row", "unknown informative label"]
    with pytest.raises(CmiError, match="--task must be one of"):
        crisismmd.load(real_root, task="sentiment")
    with pytest.raises(CmiError, match="crisismmd_datasplit_all/ not found"):
        crisismmd.load(real_root / "data_image")
