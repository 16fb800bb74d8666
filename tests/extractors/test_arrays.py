import pickle

import numpy as np
import pytest

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.arrays import ArrayParams, fit_array, load_array, reference_params, sequence_lengths


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_npy_vector_is_read_as_float32_and_stored_as_is(tmp_path):
    np.save(tmp_path / "v.npy", np.array([1, 2, 3, 4], dtype=np.int16))
    array = load_array(tmp_path / "v.npy")
    assert array.dtype == np.float32 and array.tolist() == [1, 2, 3, 4]
    params = ArrayParams.of(array, reference=str(tmp_path / "v.npy"))
    assert (params.layout, params.shape, params.output_shape()) == ("vector", (4,), (4,))
    np.testing.assert_array_equal(fit_array(array, params), [1, 2, 3, 4])
    # a 1-D array stays a vector even when a length is asked for (sequences only are padded)
    assert ArrayParams.of(array, length=10).layout == "vector"


def test_npz_key_picks_the_array_and_a_missing_key_is_a_reject_naming_it(tmp_path):
    np.savez(tmp_path / "two.npz", signal=np.arange(6.0).reshape(3, 2), meta=np.zeros(2))
    np.testing.assert_array_equal(load_array(tmp_path / "two.npz", "signal"), np.arange(6.0).reshape(3, 2))
    with pytest.raises(MediaError, match=r"has no array 'ecg' \(it holds signal, meta\)"):
        load_array(tmp_path / "two.npz", "ecg")
    with pytest.raises(MediaError, match="holds signal, meta: name the array with --modality NAME=array:KEY"):
        load_array(tmp_path / "two.npz")
    np.savez_compressed(tmp_path / "one.npz", x=np.ones(5, np.float64))
    assert load_array(tmp_path / "one.npz").shape == (5,)  # its only array, no key needed


def test_csv_and_tsv_sequences_are_padded_and_cropped_with_a_presence_mask(tmp_path):
    write(tmp_path / "short.csv", "x,y\n1,2\n3, 4\n")                     # a header row, 2 steps
    write(tmp_path / "long.tsv", "# a comment\n" + "".join(f"{t}\t{-t}\n" for t in range(7)))  # 7 steps
    short, long = load_array(tmp_path / "short.csv"), load_array(tmp_path / "long.tsv")
    assert short.shape == (2, 2) and long.shape == (7, 2)
    params = ArrayParams.of(short, length=5, reference=str(tmp_path / "short.csv"))
    assert (params.layout, params.shape, params.output_shape()) == ("sequence", (5, 2), (5, 3))
    padded, cropped = fit_array(short, params), fit_array(long, params)
    np.testing.assert_array_equal(padded, [[1, 2, 1], [3, 4, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(cropped[:, :2], long[:5])          # the first 5 steps are kept
    assert cropped[:, 2].tolist() == [1] * 5
    assert sequence_lengths(np.stack([padded, cropped])).tolist() == [2, 5]
    # one column is a one-channel sequence
    write(tmp_path / "one.csv", "0.5\n1.5\n")
    assert load_array(tmp_path / "one.csv").shape == (2, 1)


def test_without_a_length_every_file_must_have_the_reference_shape(tmp_path):
    vector = ArrayParams.of(np.zeros(4, np.float32), reference="/data/ref.npy")
    with pytest.raises(MediaError, match=r"shape \(5,\), expected \(4,\) \(as in ref.npy\)"):
        fit_array(np.zeros(5, np.float32), vector, "b.npy")
    with pytest.raises(MediaError, match=r"shape \(2, 2\), expected \(4,\)"):
        fit_array(np.zeros((2, 2), np.float32), vector, "b.npy")
    sequence = ArrayParams.of(np.zeros((6, 3), np.float32), reference="/data/ref.csv")
    assert sequence.output_shape() == (6, 4) and sequence.length is None
    with pytest.raises(MediaError, match="holds 7 time steps, expected 6 .*--array-length N"):
        fit_array(np.zeros((7, 3), np.float32), sequence, "b.csv")
    padded = ArrayParams.of(np.zeros((6, 3), np.float32), length=8)
    with pytest.raises(MediaError, match=r"shape \(6, 2\), 2 channels a step; expected \(T, 3\)"):
        fit_array(np.zeros((6, 2), np.float32), padded, "b.csv")
    with pytest.raises(MediaError, match=r"expected a sequence \(T, 3\)"):
        fit_array(np.zeros(6, np.float32), padded, "b.npy")
    # more than 2 dimensions: time first, the rest flattened into channels
    cube = ArrayParams.of(np.zeros((4, 2, 3), np.float32))
    assert cube.shape == (4, 6)
    np.testing.assert_array_equal(fit_array(np.ones((4, 2, 3), np.float32), cube)[:, :6], np.ones((4, 6)))


@pytest.mark.parametrize("name, content, reason", [
    ("garbage.npy", b"not an array at all", "unreadable array file"),
    ("truncated.npy", None, "unreadable array file .*fully written"),
    ("pickled.npy", pickle.dumps([1, 2, 3]), "unreadable array file .*pickled"),
    ("broken.npz", b"PK\x03\x04garbage", "unreadable array file .*zip"),
    ("ragged.csv", b"1,2\n3\n", "unreadable array file .*number of columns changed"),
    ("words.tsv", b"a\tb\nc\td\n", "unreadable array file"),
    ("header-only.csv", b"x,y\n", "empty array"),
    ("empty.npy", b"", "empty file"),
    ("strings.npy", None, "holds <U1 values, not real numbers"),
    ("objects.npy", None, "unreadable array file .*Object arrays"),
    ("missing.npy", None, "missing file"),
])
def test_unreadable_files_are_media_errors(tmp_path, name, content, reason):
    path = tmp_path / name
    if name == "truncated.npy":
        np.save(path, np.arange(100.0))
        path.write_bytes(path.read_bytes()[:300])
    elif name == "strings.npy":
        np.save(path, np.array(["a", "b"]))
    elif name == "objects.npy":
        np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=reason):
        load_array(path)


def test_the_reference_is_the_first_readable_file(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"junk")
    np.save(tmp_path / "good.npy", np.zeros((3, 2)))
    params = reference_params([str(tmp_path / "absent.npy"), str(tmp_path / "bad.npy"), str(tmp_path / "good.npy")],
                              "sig", length=4)
    assert params == ArrayParams("sequence", (4, 2), 4, None, str(tmp_path / "good.npy"))
    assert ArrayParams.from_dict(params.to_dict()) == params
    with pytest.raises(CmiError, match="'sig': no file is readable.*missing file"):
        reference_params([str(tmp_path / "absent.npy"), str(tmp_path / "bad.npy")], "sig")
    with pytest.raises(CmiError, match="has no file"):
        reference_params([], "sig")
