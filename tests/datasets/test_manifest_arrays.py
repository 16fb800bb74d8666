"""Array modalities in the manifest dataset: .npy / .npz / CSV / TSV files per sample."""

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace
from pipelines.datasets import manifest
from pipelines.errors import CmiError
from pipelines.extractors.arrays import sequence_lengths
from pipelines.prepare import FeatureOptions, RunOptions, prepare_listing
from pipelines.shards import modality_specs, read_table, tensor_column
from tests.extractors.media_files import sine, write_wav


def write_csv(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_text(text, encoding="utf-8")
    return folder / "manifest.csv"


def cmi(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, re.sub(r"\s+", " ", result.output)


def test_array_kind_is_inferred_from_the_cells_extensions(tmp_path):
    path = write_csv(tmp_path, (
        "id,label,split,vec,seq,note\n"
        "a,x,train,f/a.npy,f/a.CSV,a.csv is a file name\n"
        "b,y,test,f/b.npz,f/b.tsv,plain words\n"
    ))
    listing = manifest.load(path)
    assert [(m.name, m.source) for m in listing.modalities] == [("vec", "array"), ("seq", "array"), ("note", "text")]
    assert listing.samples[0].media == {"vec": str(tmp_path / "f/a.npy"), "seq": str(tmp_path / "f/a.CSV")}
    assert listing.defaults == {}


def test_the_npz_key_is_part_of_the_modality_option(tmp_path):
    path = write_csv(tmp_path, "id,label,split,file,img\na,x,train,a.npz,a.png\nb,y,test,b.npz,b.png\n")
    listing = manifest.load(path, modalities=["ecg=array:signal@file", "img=image"])
    assert [(m.name, m.source) for m in listing.modalities] == [("ecg", "array"), ("img", "image")]
    assert listing.samples[0].media["ecg"] == str(tmp_path / "a.npz")
    assert listing.defaults == {"array_keys": {"ecg": "signal"}}
    assert manifest.ModalityOption.parse("file=array") == manifest.ModalityOption("file", "array", "file", None)
    for bad in ("img=image:signal", "ecg=array:@file", "ecg=tensor@file"):
        with pytest.raises(CmiError, match="array:KEY|array modality takes a key"):
            manifest.load(path, modalities=[bad])


def write_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 24, 3), colour, np.uint8)).save(path)


def test_prepare_manifest_with_csv_sequences_and_images_end_to_end(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    steps = {"s1": 4, "s2": 9, "s3": 6, "s4": 2, "s5": 5, "s6": 7, "s7": 3, "s8": 8}
    series = {}
    rows = ["id,label,split,group,photo,ecg"]
    for k, (sample, t) in enumerate(steps.items()):
        label = "ab"[k % 2]
        split = ["train"] * 4 + ["val", "val", "test", "test"]
        series[sample] = rng.normal(size=(t, 2)).round(3).astype(np.float32)
        suffix, sep = (".tsv", "\t") if k % 3 == 2 else (".csv", ",")
        header = "lead1,lead2\n" if k == 0 else ""
        (data / "ecg").mkdir(parents=True, exist_ok=True)
        (data / "ecg" / f"{sample}{suffix}").write_text(
            header + "".join(sep.join(map(str, row)) + "\n" for row in series[sample]), encoding="utf-8")
        write_png(data / "img" / f"{sample}.png", (200, 40, 40) if label == "a" else (40, 200, 40))
        rows.append(f"{sample},{label},{split[k]},site-{k % 2},img/{sample}.png,ecg/{sample}{suffix}")
    # s9: three channels (wrong shape); s10: not a table (unreadable); s11: no ecg at all (not a reject)
    (data / "ecg" / "s9.csv").write_text("1,2,3\n4,5,6\n", encoding="utf-8")
    (data / "ecg" / "s10.csv").write_bytes(b"\x00\xff\x00 binary junk")
    for sample in ("s9", "s10", "s11"):
        write_png(data / "img" / f"{sample}.png", (200, 40, 40))
    rows += ["s9,a,train,site-0,img/s9.png,ecg/s9.csv", "s10,a,train,site-0,img/s10.png,ecg/s10.csv",
             "s11,a,test,site-1,img/s11.png,"]
    write_csv(data, "\n".join(rows) + "\n")

    code, out = cmi("-w", tmp_path / "ws", "prepare", "manifest", "--root", data / "manifest.csv", "--array-length", 6,
                    "--image-size", 16, "--workers", 1, "--max-reject-fraction", 0.5)
    assert code == 0, out
    assert "ecg │ sequence │ 6×3 (last channel: mask) │ float32" in out
    art = Workspace(tmp_path / "ws").resolve("dataset")
    specs = {s.name: s for s in modality_specs(art)}
    assert (specs["photo"].kind, specs["photo"].shape) == ("image", (16, 16, 3))
    ecg = specs["ecg"]
    assert (ecg.kind, ecg.shape, ecg.dtype) == ("sequence", (6, 3), "float32")
    assert ecg.params == {"layout": "sequence", "shape": [6, 2], "length": 6, "key": None,
                          "reference": str(data / "ecg" / "s1.csv")}
    table = read_table(art)
    ids = table.column("id").to_pylist()
    assert ids == [f"s{i}" for i in range(1, 12)]  # every sample kept: each has its photo
    present = dict(zip(ids, table.column("ecg_present").to_pylist()))
    assert [i for i in ids if not present[i]] == ["s9", "s10", "s11"]
    payload = tensor_column(table, "ecg")
    assert payload.shape == (11, 6, 3) and payload.dtype == np.float32
    lengths = dict(zip(ids, sequence_lengths(payload).tolist()))
    assert {i: lengths[i] for i in steps} == {i: min(t, 6) for i, t in steps.items()}
    assert lengths["s9"] == lengths["s10"] == 0
    for i, sample in enumerate(ids[:8]):
        t = min(steps[sample], 6)
        np.testing.assert_array_equal(payload[i, :t, :2], series[sample][:t])  # cropped to its first 6 steps
        assert not payload[i, t:].any()                                       # zero padding, mask 0
        assert (payload[i, :t, 2] == 1).all()
    rejects = {r["id"]: r for r in pq.read_table(art.path / "rejects.parquet").to_pylist()}
    assert set(rejects) == {"s9", "s10"}
    assert "3 channels a step; expected (T, 2) (as in s1.csv)" in rejects["s9"]["reason"]
    assert rejects["s10"]["reason"].startswith("unreadable array file")
    assert rejects["s9"]["modality"] == "ecg" and not rejects["s9"]["sample_dropped"]


def test_prepare_manifest_with_npz_vectors_and_audio(tmp_path):
    data = tmp_path / "data"
    rows = ["id,label,split,labs,wav"]
    for k in range(6):
        sample, label, split = f"p{k}", "xy"[k % 2], ["train", "train", "train", "val", "test", "test"][k]
        (data / "labs").mkdir(parents=True, exist_ok=True)
        np.savez(data / "labs" / f"{sample}.npz", feat=np.arange(4) + k, other=np.zeros(3))
        write_wav(data / "wav" / f"{sample}.wav", sine(300 + 100 * k, 0.3, 8000), 8000)
        rows.append(f"{sample},{label},{split},labs/{sample}.npz,wav/{sample}.wav")
    np.savez(data / "labs" / "p6.npz", feat=np.arange(5))          # 5 values instead of 4
    np.savez(data / "labs" / "p7.npz", features=np.arange(4))      # no `feat` array
    write_wav(data / "wav" / "p6.wav", sine(500, 0.3, 8000), 8000)
    rows += ["p6,x,train,labs/p6.npz,", "p7,y,train,labs/p7.npz,wav/p6.wav"]
    listing = manifest.load(write_csv(data, "\n".join(rows) + "\n"),
                            modalities=["labs=array:feat", "sound=audio@wav"])
    features = FeatureOptions(sample_rate=8000, audio_duration=0.25, n_fft=64, hop_length=32)
    art = prepare_listing(Workspace(tmp_path / "ws"), listing, features, RunOptions(max_reject_fraction=0.5)).artifact
    specs = {s.name: s for s in modality_specs(art)}
    assert (specs["labs"].kind, specs["labs"].shape, specs["labs"].params["key"]) == ("vector", (4,), "feat")
    assert specs["sound"].kind == "spectrogram"
    table = read_table(art)
    assert table.column("id").to_pylist() == [f"p{k}" for k in range(8) if k != 6]  # p6 has nothing left
    np.testing.assert_array_equal(tensor_column(table, "labs")[:6], np.arange(4)[None] + np.arange(6)[:, None])
    assert table.column("labs_present").to_pylist() == [True] * 6 + [False]
    rejects = {r["id"]: r for r in pq.read_table(art.path / "rejects.parquet").to_pylist()}
    assert "shape (5,), expected (4,) (as in p0.npz)" in rejects["p6"]["reason"] and rejects["p6"]["sample_dropped"]
    assert "has no array 'feat' (it holds features)" in rejects["p7"]["reason"]
    assert not rejects["p7"]["sample_dropped"]


def test_array_length_needs_a_sequence(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "a.npy", np.zeros(3))
    np.save(data / "b.npy", np.ones(3))
    listing = manifest.load(write_csv(data, "id,label,split,v\na,x,train,a.npy\nb,y,test,b.npy\n"))
    with pytest.raises(CmiError, match="--array-length pads or crops sequences, and v hold.* 1-D vectors"):
        prepare_listing(Workspace(tmp_path / "ws"), listing, FeatureOptions(array_length=4))
    with pytest.raises(CmiError, match="--array-length must be at least 1"):
        prepare_listing(Workspace(tmp_path / "ws"), listing, FeatureOptions(array_length=0))
    image = manifest.load(write_csv(tmp_path / "img", "id,label,split,p\na,x,train,a.png\nb,y,test,b.png\n"))
    with pytest.raises(CmiError, match="--array-length applies to array modalities"):
        prepare_listing(Workspace(tmp_path / "ws"), image, FeatureOptions(array_length=4))
