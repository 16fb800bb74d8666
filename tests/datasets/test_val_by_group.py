"""--val-by group: validation carved from whole groups, never sharing a group with train."""

import shutil
from collections import Counter

import pytest

from pipelines.artifacts import Workspace
from pipelines.datasets import ave, cremad, crisismmd, manifest
from pipelines.datasets.base import Sample, carve_by, carve_group_validation
from pipelines.errors import CmiError
from pipelines.prepare import build_listing
from tests.datasets.fixtures import REFERENCE, requires_reference


def listing(sizes, test_per_group=1):
    """Samples of groups g00, g01, ... with ``sizes`` train samples each (labels alternate) and
    ``test_per_group`` test samples per group, interleaved so that order matters."""
    samples = []
    for g, size in enumerate(sizes):
        samples += [Sample(f"g{g:02d}-{i}", i % 2, "train", f"g{g:02d}") for i in range(size)]
        samples += [Sample(f"g{g:02d}-t{i}", 0, "test", f"g{g:02d}") for i in range(test_per_group)]
    return samples


def groups_of(samples, split):
    return {s.group for s in samples if s.split == split}


def test_whole_groups_move_and_no_val_group_is_in_train():
    samples = listing([10] * 20)
    carved = carve_group_validation(samples, 0.2, seed=0)
    assert [s.id for s in carved] == [s.id for s in samples]  # order unchanged
    val, train = groups_of(carved, "val"), groups_of(carved, "train")
    assert len(val) == 4 and not val & train  # equal groups: 20% of the samples = 20% of the groups
    # every train sample of a val group moved; test is untouched
    assert all(s.split == "val" for s in carved if s.group in val and not s.id.split("-")[1].startswith("t"))
    assert [s.split for s in carved if "-t" in s.id] == ["test"] * 20
    assert Counter(s.split for s in carved) == {"train": 160, "val": 40, "test": 20}


def test_the_choice_is_seeded_and_deterministic():
    samples = listing([10] * 20)
    a = groups_of(carve_group_validation(samples, 0.2, seed=0), "val")
    assert a == groups_of(carve_group_validation(samples, 0.2, seed=0), "val")
    assert a != groups_of(carve_group_validation(samples, 0.2, seed=1), "val")
    assert carve_by(samples, "group", 0.2, 0) == carve_group_validation(samples, 0.2, 0)


def test_uneven_groups_come_as_close_to_the_sample_share_as_whole_groups_allow():
    # 7 uneven groups like CrisisMMD's events: 1000 train samples, target 10% = 100
    sizes = [400, 250, 150, 90, 60, 30, 20]
    samples = listing(sizes, test_per_group=0)
    chosen = set()
    for seed in range(10):
        carved = carve_group_validation(samples, 0.1, seed)
        n_val = sum(s.split == "val" for s in carved)
        assert 50 <= n_val <= 150, (seed, n_val)
        # no group left in train would bring val closer to the target
        left = [sizes[int(g[1:])] for g in groups_of(carved, "train")]
        assert all(abs(n_val + size - 100) >= abs(n_val - 100) for size in left), (seed, n_val)
        assert not groups_of(carved, "val") & groups_of(carved, "train")
        chosen.add(frozenset(groups_of(carved, "val")))
    assert len(chosen) > 2  # the seed picks among the near-target combinations
    # every group at least twice the target: the smallest one still goes to val, train keeps the rest
    carved = carve_group_validation(listing([50, 40, 60], test_per_group=0), 0.05, seed=0)
    assert groups_of(carved, "val") == {"g01"} and groups_of(carved, "train") == {"g00", "g02"}
    # a share near 1 still leaves a group for training
    carved = carve_group_validation(listing([5, 5], test_per_group=0), 0.95, seed=0)
    assert len(groups_of(carved, "val")) == 1 and len(groups_of(carved, "train")) == 1


def test_zero_fraction_changes_nothing_and_errors_name_the_fix():
    samples = listing([3, 3])
    assert carve_group_validation(samples, 0.0, seed=0) == samples
    with pytest.raises(CmiError, match=r"--val-fraction must be in \[0, 1\)"):
        carve_group_validation(samples, 1.0, seed=0)
    no_group = samples + [Sample("lonely", 0, "train", None)]
    with pytest.raises(CmiError, match=r"1 of 7 have none \(e.g. 'lonely'\).*fill its `group` cell.*--val-by random"):
        carve_group_validation(no_group, 0.5, seed=0)
    with pytest.raises(CmiError, match=r"at least two groups in train.*has 1 \('g00'\)"):
        carve_group_validation(listing([6]), 0.5, seed=0)
    with pytest.raises(CmiError, match="--val-by must be one of random, group"):
        carve_by(samples, "speaker", 0.5, 0)


# ----------------------------------------------------------------------------- cremad / synthetic


@pytest.fixture
def cremad_root(tmp_path):
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "VideoFlash").mkdir()
    return tmp_path


def test_cremad_literature_split_with_actor_disjoint_val(cremad_root):
    listing_ = cremad.load(cremad_root, val_by="group", seed=0)
    val, train, test = (groups_of(listing_.samples, s) for s in ("val", "train", "test"))
    assert not val & train and len(val) == 9 and len(train) == 82
    n = Counter(s.split for s in listing_.samples)
    assert n["test"] == 744 and abs(n["val"] - 0.1 * 6698) < 40  # about 10% of the train clips, whole actors
    assert test == train | val  # the literature test split is untouched (random, every actor)
    assert listing_.info == {"split": "literature", "val_by": "group", "val_fraction": 0.1, "seed": 0}
    assert cremad.load(cremad_root).info["val_by"] == "random"  # the default stays the stratified carve
    other = cremad.load(cremad_root, val_by="group", seed=1)
    assert groups_of(other.samples, "val") != val


def test_cremad_actor_split_is_recorded_as_group_and_refuses_random(cremad_root):
    assert cremad.load(cremad_root, split="actor").info["val_by"] == "group"
    assert cremad.load(cremad_root, split="actor", val_by="group").info["val_by"] == "group"
    with pytest.raises(CmiError, match="--val-by random does not apply with --split actor: .* always actor-disjoint"):
        cremad.load(cremad_root, split="actor", val_by="random")


# ----------------------------------------------------------------------------- manifest


def write_csv(folder, rows, header="id,label,split,group,img"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return folder / "manifest.csv"


def site_rows(with_val=False):
    """8 sites of 5 train samples each, plus one test (and optionally one val) row per site."""
    rows = [f"s{g}-{i},{'ab'[i % 2]},train,site{g},x.png" for g in range(8) for i in range(5)]
    rows += [f"s{g}-test,a,test,site{g},x.png" for g in range(8)]
    if with_val:
        rows += [f"s{g}-val,b,val,site{g},x.png" for g in range(8)]
    return rows


def test_manifest_without_val_rows_carves_whole_groups(tmp_path):
    listing_ = manifest.load(write_csv(tmp_path, site_rows()), val_by="group", val_fraction=0.25, seed=2)
    val, train = groups_of(listing_.samples, "val"), groups_of(listing_.samples, "train")
    assert len(val) == 2 and not val & train
    assert listing_.info["val_by"] == "group" and listing_.info["val_fraction"] == 0.25
    assert listing_.info["split"] == "manifest (val carved from train)"
    default = manifest.load(tmp_path / "manifest.csv", val_by="group")  # --val-fraction defaults to 0.1
    assert len(groups_of(default.samples, "val")) == 1


def test_manifest_val_rows_are_only_replaced_when_asked(tmp_path):
    path = write_csv(tmp_path, site_rows(with_val=True))
    with pytest.raises(CmiError, match="manifest.csv's val rows already give a validation split.*Drop --val-by.*"
                                       "--val-fraction F as well"):
        manifest.load(path, val_by="group")
    kept = manifest.load(path, val_fraction=0.3)  # val rows given: kept, --val-fraction unused
    assert Counter(s.split for s in kept.samples)["val"] == 8 and kept.info["val_by"] is None
    recarved = manifest.load(path, val_by="group", val_fraction=0.25, seed=0)
    val, train = groups_of(recarved.samples, "val"), groups_of(recarved.samples, "train")
    assert len(val) == 2 and not val & train  # 8 sites x 6 train+val rows: 2 sites are 25%
    assert Counter(s.split for s in recarved.samples) == {"train": 36, "val": 12, "test": 8}
    assert recarved.info["split"] == "manifest (val rows moved to train, val carved by group)"


def test_manifest_without_groups_names_the_fix(tmp_path):
    path = write_csv(tmp_path, ["a,x,train,a.png", "b,y,train,b.png"], header="id,label,split,img")
    with pytest.raises(CmiError, match="has no group column.*add a `group` column"):
        manifest.load(path, val_by="group")
    path = write_csv(tmp_path / "b", ["a,x,train,site1,a.png", "b,y,train,,b.png"])
    with pytest.raises(CmiError, match=r"1 of 2 have none \(e.g. 'b'\)"):
        manifest.load(path, val_by="group")


# ----------------------------------------------------------------------------- ave / crisismmd


def test_ave_refuses_val_by_before_reading_anything(tmp_path):
    for value in ("group", "random"):
        with pytest.raises(CmiError, match="--val-by does not apply to ave: AVE has no group column.*valSet.txt"):
            ave.load(tmp_path / "nowhere", val_by=value)
    # through prepare's option routing too (not the generic "does not apply" message)
    with pytest.raises(CmiError, match="AVE has no group column"):
        build_listing(Workspace(tmp_path / "ws"), "ave", tmp_path, {"val_by": "group"})


@requires_reference
def test_crisismmd_dev_is_replaced_by_whole_events_only_when_asked(tmp_path):
    root = tmp_path / "CrisisMMD_v2.0"
    (root / "data_image").mkdir(parents=True)
    shutil.copytree(REFERENCE / "crisismmd", root / "crisismmd_datasplit_all")
    with pytest.raises(CmiError, match=r"crisismmd's dev split files .* already give a validation split.*--val-fraction"):
        crisismmd.load(root, val_by="group")
    with pytest.raises(CmiError, match="--val-by random does not apply"):
        crisismmd.load(root, val_by="random")
    with pytest.raises(CmiError, match="--val-fraction and --seed apply to crisismmd only with --val-by group"):
        crisismmd.load(root, val_fraction=0.1)
    official = crisismmd.load(root)
    assert groups_of(official.samples, "val") == groups_of(official.samples, "train")  # dev shares every event
    listing_ = crisismmd.load(root, val_by="group", val_fraction=0.1, seed=0)
    val, train = groups_of(listing_.samples, "val"), groups_of(listing_.samples, "train")
    assert val and not val & train and val | train == groups_of(official.samples, "train")
    n = Counter(s.split for s in listing_.samples)
    assert n["train"] + n["val"] == 13608 + 2237 and n["test"] == 2237
    assert 0.05 < n["val"] / (n["train"] + n["val"]) < 0.15
    assert listing_.info["val_by"] == "group" and listing_.info["seed"] == 0
    assert listing_.group_name == "event"
