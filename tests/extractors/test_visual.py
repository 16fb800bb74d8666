"""Video frames: which frames are picked (frames encode their index), cropping, face crop, rejects."""

from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.visual import (
    VisualParams,
    extract_frames,
    face_box,
    face_crops,
    frame_times,
    resize_center_crop,
)
from tests.extractors.media_files import decoded_indices, index_frames, sine, write_video


@pytest.fixture(scope="module")
def cremad_flv(tmp_path_factory) -> Path:
    """A CREMA-D-shaped clip: FLV (Sorenson) 480x360, 30 fps, 2.5 s = 75 frames, mp3 track."""
    path = tmp_path_factory.mktemp("cremad") / "1001_DFA_ANG_XX.flv"
    return write_video(path, index_frames(75, 360, 480), wave=sine(440, 2.5, 22050), sample_rate=22050)


@pytest.fixture(scope="module")
def ave_mp4(tmp_path_factory) -> Path:
    """An AVE-shaped clip: mp4, H.264 with B-frames, 25 fps, 10 s = 250 frames, AAC track."""
    path = tmp_path_factory.mktemp("ave") / "-0A9suni5YA.mp4"
    frames, wave = index_frames(250, 96, 128), sine(440, 10.0, 16000)
    return write_video(path, frames, fps=25, codec="h264", gop=50, wave=wave, audio_codec="aac")


# ---------------------------------------------------------------- frame_times


def test_frame_times_are_segment_centres():
    np.testing.assert_allclose(frame_times(2.5, 3), [2.5 / 6, 1.25, 2.5 * 5 / 6])
    np.testing.assert_allclose(frame_times(10.0, 2, start=3.0, end=7.0), [4.0, 6.0])
    np.testing.assert_allclose(frame_times(10.0, 2, start=8.0, end=12.0), [8.5, 9.5])  # clipped to the clip
    np.testing.assert_allclose(frame_times(4.0, 1), [2.0])


@pytest.mark.parametrize("start, end", [(5.0, 5.0), (12.0, 14.0), (3.0, 1.0)])
def test_empty_or_outside_window_is_a_reject(start, end):
    with pytest.raises(MediaError, match="window"):
        frame_times(10.0, 3, start=start, end=end)


def test_params_shape_and_validation():
    params = VisualParams(num_frames=2, image_size=64, face_crop=True)
    assert params.output_shape() == (2, 64, 64, 3)
    assert VisualParams(**params.to_dict()) == params
    with pytest.raises(CmiError):
        VisualParams(num_frames=0)


# ---------------------------------------------------------------- which frames


def test_cremad_clip_frames_on_screen_at_segment_centres(cremad_flv):
    # times 0.417, 1.25, 2.083 s at 30 fps -> frames 12, 37, 62 (the frame shown at each time)
    frames = extract_frames(cremad_flv, VisualParams())
    assert frames.shape == (3, 112, 112, 3) and frames.dtype == np.uint8
    assert decoded_indices(frames) == [12, 37, 62]


def test_many_frames_include_neighbours_and_skip_nothing(cremad_flv):
    frames = extract_frames(cremad_flv, VisualParams(num_frames=25, image_size=32))
    # 25 segments of 0.1 s: centres 0.05 + 0.1 i -> frame floor(30 * t) = 1 + 3 i
    assert decoded_indices(frames) == [1 + 3 * i for i in range(25)]


@pytest.mark.parametrize("gop", [1, 300])
def test_same_frames_whatever_the_keyframe_interval(tmp_path, gop):
    """All-keyframe and single-keyframe streams exercise both the seek and the decode-on paths."""
    path = write_video(tmp_path / f"gop{gop}.flv", index_frames(75, 72, 96), gop=gop)
    assert decoded_indices(extract_frames(path, VisualParams(num_frames=5, image_size=32))) == [7, 22, 37, 52, 67]


def test_ave_event_window_in_h264_with_b_frames(ave_mp4):
    # window [2, 6] s, 4 frames: 2.5, 3.5, 4.5, 5.5 s at 25 fps -> frames 62, 87, 112, 137
    frames = extract_frames(ave_mp4, VisualParams(num_frames=4, image_size=48), start=2.0, end=6.0)
    assert frames.shape == (4, 48, 48, 3)
    assert decoded_indices(frames) == [62, 87, 112, 137]
    # whole clip: 10 frames at 0.5 + i s -> 12 + 25 i (12.5 rounds down: the frame on screen)
    assert decoded_indices(extract_frames(ave_mp4, VisualParams(num_frames=10, image_size=32))) == [
        12 + 25 * i for i in range(10)
    ]


def test_extraction_is_deterministic(ave_mp4):
    params = VisualParams(num_frames=3, image_size=40)
    np.testing.assert_array_equal(extract_frames(ave_mp4, params), extract_frames(ave_mp4, params))


# ---------------------------------------------------------------- cropping


def test_centre_crop_of_a_landscape_frame_by_hand():
    image = np.zeros((1, 4, 8, 3), np.uint8)
    image[0, :, 2:6] = 200  # the centred 4x4 square
    image[0, 1, 3] = 50
    out = resize_center_crop(image, 4)
    expected = np.full((4, 4, 3), 200, np.uint8)
    expected[1, 1] = 50
    np.testing.assert_array_equal(out[0], expected)


def test_shrinking_a_portrait_frame_keeps_its_middle_rows():
    image = np.zeros((2, 200, 100, 3), np.uint8)
    image[:, 50:150] = 255  # rows kept by a centre crop of the 100-pixel shorter side
    out = resize_center_crop(image, 25)
    assert out.shape == (2, 25, 25, 3)
    assert (out == 255).all()


def test_enlarging_a_small_frame():
    image = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(1, 2, 2, 3) * 20
    out = resize_center_crop(image, 6)
    assert out.shape == (1, 6, 6, 3)
    np.testing.assert_array_equal(out[0, 0, 0], image[0, 0, 0])  # corners keep their colour
    np.testing.assert_array_equal(out[0, -1, -1], image[0, -1, -1])


@pytest.fixture(scope="module")
def portrait_frame() -> np.ndarray:
    """A 480x360 frame with Grace Hopper's portrait (matplotlib's sample image) on its left."""
    cv2 = pytest.importorskip("cv2")
    from matplotlib import cbook

    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample data (grace_hopper.jpg) is not installed")
    portrait = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # 600 x 512
    frame = np.full((360, 480, 3), 90, np.uint8)
    frame[:, :307] = cv2.resize(portrait, (307, 360), interpolation=cv2.INTER_AREA)
    return frame


def test_face_box_finds_the_face_off_centre(portrait_frame):
    top, left, side = face_box(portrait_frame)
    # at full size the face lies around (x 155..377, y 105..327) of 512x600 -> centre (266, 216),
    # i.e. about (160, 130) in the 307x360 copy
    assert abs(left + side / 2 - 160) < 25 and abs(top + side / 2 - 130) < 25
    assert 100 < side < 250 and 0 <= top and top + side <= 360 and left + side <= 480


def test_face_crop_and_centre_crop_fallback(portrait_frame):
    blank = np.full_like(portrait_frame, 90)
    crops = face_crops(np.stack([portrait_frame, blank]), 64)
    top, left, side = face_box(portrait_frame)
    face = portrait_frame[None, top : top + side, left : left + side]
    np.testing.assert_array_equal(crops[0], resize_center_crop(face, 64)[0])
    np.testing.assert_array_equal(crops[1], resize_center_crop(blank[None], 64)[0])
    assert face_box(blank) is None


def test_face_crop_from_a_video(tmp_path, portrait_frame):
    path = write_video(tmp_path / "face.flv", np.stack([portrait_frame] * 15))
    frames = extract_frames(path, VisualParams(num_frames=2, image_size=64, face_crop=True))
    with av.open(str(path)) as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    # 2 frames of a 0.5 s clip: 0.125 s and 0.375 s at 30 fps -> frames 3 and 11
    np.testing.assert_array_equal(frames, face_crops(decoded[[3, 11]], 64))
    centre = resize_center_crop(portrait_frame[None], 64)[0]
    assert all(np.abs(frame.astype(int) - centre).mean() > 40 for frame in frames)


# ---------------------------------------------------------------- rejects


def test_missing_and_zero_byte_files(tmp_path):
    with pytest.raises(MediaError, match="missing file"):
        extract_frames(tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv", VisualParams())
    (tmp_path / "zero.flv").touch()
    with pytest.raises(MediaError, match="empty file"):
        extract_frames(tmp_path / "zero.flv", VisualParams())


def test_garbage_is_unreadable(tmp_path):
    path = tmp_path / "noise.flv"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="unreadable"):
        extract_frames(path, VisualParams())


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = write_video(tmp_path / "voice.mp4", None, wave=sine(440, 1.0, 16000), audio_codec="aac")
    with pytest.raises(MediaError, match="no video stream"):
        extract_frames(path, VisualParams())


def test_truncated_flv(tmp_path, cremad_flv):
    path = tmp_path / "cut.flv"
    data = cremad_flv.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"truncated video: .* holds 1\.\d\d s of the 2\.\d\d s"):
        extract_frames(path, VisualParams())


def test_truncated_mp4(tmp_path, ave_mp4):
    path = tmp_path / "cut.mp4"
    data = ave_mp4.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: nothing left to read
    with pytest.raises(MediaError, match="unreadable"):
        extract_frames(path, VisualParams())


def test_truncated_mp4_with_its_index_first(tmp_path):
    path = write_video(tmp_path / "v.mp4", index_frames(250, 64, 64), fps=25, codec="h264", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaError, match=r"truncated video: .* of the 10\.00 s"):
        extract_frames(cut, VisualParams())


def test_window_beyond_the_clip(ave_mp4):
    with pytest.raises(MediaError, match="window"):
        extract_frames(ave_mp4, VisualParams(), start=11.0, end=12.0)
