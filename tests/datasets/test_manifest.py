from collections import Counter

import pytest

from pipelines.datasets import manifest
from pipelines.errors import CmiError


def write_csv(folder, text, name="manifest.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


def test_columns_kinds_paths_and_empty_cells(tmp_path):
    write_csv(tmp_path, (
        "\ufeffid,label,split,group,audio,photo,caption\r\n"
        "s1,dog,train,site-a,media/s1.wav,media/s1.JPG,a dog barks\r\n"
        "s2,cat,test,,media/s2.flac,,\r\n"
        "s3,cat,val,site-b,,/abs/s3.png,\"a cat, sleeping\"\r\n"
    ))
    listing = manifest.load(tmp_path)  # the folder: manifest.csv inside
    assert [(m.name, m.source) for m in listing.modalities] == [("audio", "audio"), ("photo", "image"), ("caption", "text")]
    assert listing.classes == ["cat", "dog"]
    s1, s2, s3 = listing.samples
    assert (s1.id, s1.label, s1.split, s1.group) == ("s1", 1, "train", "site-a")
    assert s1.media == {"audio": str(tmp_path / "media/s1.wav"), "photo": str(tmp_path / "media/s1.JPG")}
    assert s1.text == "a dog barks"
    assert s2.group is None and s2.media == {"audio": str(tmp_path / "media/s2.flac")} and s2.text is None
    assert s3.media == {"photo": "/abs/s3.png"} and s3.text == "a cat, sleeping"
    assert listing.info["split"] == "manifest"


def test_explicit_modalities_from_one_video_column(tmp_path):
    path = write_csv(tmp_path, "id,label,split,video,note\na,x,train,v/a.mp4,hello\nb,y,test,v/b.mp4,hi\n")
    listing = manifest.load(path, modalities=["audio=audio@video", "visual=frames@video"])
    assert [(m.name, m.source) for m in listing.modalities] == [("audio", "audio"), ("visual", "frames")]
    assert listing.samples[0].media == {"audio": str(tmp_path / "v/a.mp4"), "visual": str(tmp_path / "v/a.mp4")}
    assert listing.samples[0].text is None  # the note column is not used
    inferred = manifest.load(path, modalities=[])
    assert [(m.name, m.source) for m in inferred.modalities] == [("video", "frames"), ("note", "text")]


def test_val_is_carved_from_train_only_when_absent(tmp_path):
    rows = "".join(f"s{i},{'ab'[i % 2]},{'train' if i < 40 else 'test'},f{i}.png\n" for i in range(50))
    path = write_csv(tmp_path, "id,label,split,img\n" + rows)
    listing = manifest.load(path, val_fraction=0.25, seed=1)
    # 20 train samples per class -> 5 per class to val
    assert Counter((s.split, s.label) for s in listing.samples) == {
        ("train", 0): 15, ("train", 1): 15, ("val", 0): 5, ("val", 1): 5, ("test", 0): 5, ("test", 1): 5}
    assert listing.info["val_fraction"] == 0.25
    with_val = write_csv(tmp_path / "b", "id,label,split,img\na,x,train,a.png\nb,x,val,b.png\n")
    assert [s.split for s in manifest.load(with_val).samples] == ["train", "val"]


@pytest.mark.parametrize("text, options, message", [
    ("id,label,img\na,x,a.png\n", [], "column\\(s\\) split missing"),
    ("id,label,split,img\na,x,train,a.png\na,y,test,b.png\n", [], "id 'a' already used on line 2"),
    ("id,label,split,img\na,x,dev,a.png\n", [], "split 'dev' is not one of train, val, test"),
    ("id,label,split,img\na,,train,a.png\n", [], "empty id or label"),
    ("id,label,split\na,x,train\n", [], "no modality column"),
    ("id,label,split,text\n1,x,train,hello\n", [], "--modality caption=text@text"),
    ("id,label,split,t1,t2\n1,x,train,hi,ho\n", [], "at most one text modality"),
    ("id,label,split,img\n1,x,train,a.png\n", ["img=picture"], "expected NAME=KIND"),
    ("id,label,split,img\n1,x,train,a.png\n", ["img=image@photo"], "no column 'photo'"),
])
def test_validation_errors_name_the_fix(tmp_path, text, options, message):
    path = write_csv(tmp_path, text)
    with pytest.raises(CmiError, match=message):
        manifest.load(path, modalities=options)


def test_missing_csv_shows_the_layout(tmp_path):
    with pytest.raises(CmiError, match="manifest.csv not found") as exc:
        manifest.load(tmp_path)
    assert "required columns: id, label, split" in str(exc.value)
