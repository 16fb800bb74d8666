"""Audio extraction: decoding, windows, tiling, spectrogram numbers checked by hand, rejects."""

import numpy as np
import pytest

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.audio import LOG_EPS, AudioParams, audio_features, fit_duration, load_audio
from tests.extractors.media_files import index_frames, sine, write_video, write_wav

RATE = 16000


def peak_bin(wave: np.ndarray, params: AudioParams = AudioParams()) -> int:
    """Strongest STFT bin of the middle frame of a wave fitted to the params' duration."""
    spectrum = audio_features(fit_duration(wave, params.sample_rate, params.duration)[None], params)[0]
    return int(np.argmax(spectrum[:, spectrum.shape[1] // 2]))


def two_tone(sample_rate: int) -> np.ndarray:
    """500 Hz for the first second, 1500 Hz for the second one."""
    return np.concatenate([sine(500, 1.0, sample_rate), sine(1500, 1.0, sample_rate)])


# ---------------------------------------------------------------- parameters and shapes


def test_literature_stft_shape_matches_librosa_centred_frames():
    params = AudioParams()
    # 3 s at 16 kHz = 48000 samples; centred frames: 1 + 48000 // 353 = 136
    assert params.output_shape() == (257, 136)
    assert audio_features(np.zeros((2, 48000), np.float32), params).shape == (2, 257, 136)
    # the literature's 22.05 kHz figure: 257 x 188
    assert AudioParams(sample_rate=22050).output_shape() == (257, 188)


def test_logmel_shape_and_params_round_trip():
    params = AudioParams(features="logmel", n_mels=64, duration=2.0)
    assert params.output_shape() == (64, 1 + 32000 // 353)
    features = audio_features(np.zeros((3, 32000), np.float32), params)
    assert features.shape == (3, *params.output_shape()) and features.dtype == np.float32
    assert AudioParams(**params.to_dict()) == params


@pytest.mark.parametrize("bad", [{"features": "mfcc"}, {"sample_rate": 0}, {"hop_length": -1}])
def test_invalid_params_are_user_errors(bad):
    with pytest.raises(CmiError):
        AudioParams(**bad)


def test_features_reject_unfitted_waves():
    with pytest.raises(ValueError, match="48000"):
        audio_features(np.zeros((1, 47999), np.float32), AudioParams())


# ---------------------------------------------------------------- spectrogram values


def test_sine_peak_bin_and_magnitude_by_hand():
    # 1 kHz at 16 kHz is exactly 32 cycles per 512-sample window -> bin 32. With a periodic Hann
    # window (sum 256) a sine of amplitude A has |S| = A * 256 / 2 there: 0.5 -> 64.
    features = audio_features(sine(1000, 3.0, RATE)[None], AudioParams())[0]
    middle = features[:, 68]
    assert int(np.argmax(middle)) == 32
    assert middle[32] == pytest.approx(np.log(64.0 + LOG_EPS), abs=1e-3)
    # bins far from the tone hold only leakage: many orders of magnitude below the peak
    assert middle[100] < middle[32] - 10


def test_silence_is_log_eps():
    features = audio_features(np.zeros((1, 48000), np.float32), AudioParams())
    np.testing.assert_allclose(features, np.log(LOG_EPS), rtol=1e-6)


def test_batch_equals_one_at_a_time():
    params = AudioParams()
    waves = np.stack([sine(f, 3.0, RATE) for f in (300, 1000, 2500)])
    batch = audio_features(waves, params)
    for row, wave in zip(batch, waves):
        np.testing.assert_allclose(row, audio_features(wave[None], params)[0], atol=1e-5)


def test_logmel_peak_follows_frequency():
    params = AudioParams(features="logmel", n_mels=40)
    low, high = (audio_features(sine(f, 3.0, RATE)[None], params)[0][:, 68] for f in (300, 3000))
    assert np.argmax(high) > np.argmax(low)


# ---------------------------------------------------------------- tiling and cropping


def test_fit_duration_tiles_and_crops_by_hand():
    np.testing.assert_array_equal(fit_duration(np.array([1.0, 2.0, 3.0]), 1, 7), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(fit_duration(np.arange(10.0), 2, 2.0), [0, 1, 2, 3])


def test_fit_duration_repeats_a_short_clip_end_to_end():
    wave = np.random.default_rng(0).normal(size=int(1.3 * RATE)).astype(np.float32)
    fitted = fit_duration(wave, RATE, 3.0)
    assert fitted.shape == (48000,)
    np.testing.assert_array_equal(fitted[20800:41600], wave)
    np.testing.assert_array_equal(fitted[41600:], wave[: 48000 - 41600])


def test_fit_duration_refuses_an_empty_wave():
    with pytest.raises(ValueError):
        fit_duration(np.zeros(0, np.float32), RATE, 3.0)


# ---------------------------------------------------------------- decoding


def test_wav_round_trip(tmp_path):
    wave = sine(1000, 2.5, RATE)
    loaded = load_audio(write_wav(tmp_path / "a.wav", wave), RATE)
    assert loaded.dtype == np.float32 and loaded.shape == wave.shape
    np.testing.assert_allclose(loaded, wave, atol=1.5 / 32768)


def test_stereo_is_averaged_and_other_rates_resampled(tmp_path):
    left = sine(1000, 2.0, 22050)
    loaded = load_audio(write_wav(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], axis=1), 22050), RATE)
    assert loaded.shape == (32000,)
    assert np.abs(loaded[1000:-1000]).max() == pytest.approx(0.25, abs=0.01)
    assert peak_bin(loaded) == 32


def test_wav_window_is_a_slice(tmp_path):
    path = write_wav(tmp_path / "w.wav", two_tone(RATE))
    full = load_audio(path, RATE)
    np.testing.assert_array_equal(load_audio(path, RATE, start=0.5, end=1.0), full[8000:16000])
    assert peak_bin(load_audio(path, RATE, start=1.2, end=1.8)) == 48  # 1500 Hz * 512 / 16000


@pytest.mark.parametrize(
    "suffix, codec, rate, seconds_tolerance",
    [(".mp4", "aac", 16000, 0.1), (".flv", "libmp3lame", 22050, 0.1)],
)
def test_audio_track_of_a_video_with_its_window(tmp_path, suffix, codec, rate, seconds_tolerance):
    """AVE keeps the event window of the mp4's AAC track; the window lands on the right tone."""
    path = write_video(
        tmp_path / f"v{suffix}", index_frames(50, 64, 64), fps=25, codec="h264" if suffix == ".mp4" else "flv",
        wave=two_tone(rate), sample_rate=rate, audio_codec=codec,
    )
    full = load_audio(path, RATE)
    assert abs(full.size / RATE - 2.0) < seconds_tolerance
    first = load_audio(path, RATE, start=0.2, end=0.8)
    second = load_audio(path, RATE, start=1.2, end=1.8)
    assert first.shape == second.shape == (9600,)
    assert peak_bin(first) == 16 and peak_bin(second) == 48


# ---------------------------------------------------------------- rejects


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="missing file"):
        load_audio(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav", RATE)


@pytest.mark.parametrize("suffix", [".wav", ".mp4"])
def test_zero_byte_file(tmp_path, suffix):
    path = tmp_path / f"zero{suffix}"
    path.touch()
    with pytest.raises(MediaError, match="empty file"):
        load_audio(path, RATE)


def test_wav_without_samples_is_empty_audio(tmp_path):
    path = write_wav(tmp_path / "1076_MTI_NEU_XX.wav", np.zeros(0, np.float32))
    with pytest.raises(MediaError, match="empty audio"):
        load_audio(path, RATE)


def test_wav_cut_inside_its_header_is_unreadable(tmp_path):
    path = write_wav(tmp_path / "a.wav", sine(440, 1.0, RATE))
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(MediaError, match="unreadable"):
        load_audio(path, RATE)


def test_wav_cut_inside_its_data_is_truncated(tmp_path):
    path = write_wav(tmp_path / "a.wav", sine(440, 2.0, RATE))
    data = path.read_bytes()
    assert len(data) == 44 + 2 * 32000  # canonical PCM header, 2 bytes per sample
    path.write_bytes(data[: len(data) // 2])
    kept = (len(data) // 2 - 44) // 2
    with pytest.raises(MediaError, match=f"truncated audio: .* holds {kept} of the 32000 samples"):
        load_audio(path, RATE)


def test_garbage_bytes_are_unreadable(tmp_path):
    for name in ("noise.wav", "noise.mp4"):
        path = tmp_path / name
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(MediaError, match="unreadable"):
            load_audio(path, RATE)


def test_video_without_audio_track(tmp_path):
    path = write_video(tmp_path / "silent.flv", index_frames(10, 32, 32))
    with pytest.raises(MediaError, match="no audio track"):
        load_audio(path, RATE)


def test_truncated_mp4_audio_track(tmp_path):
    path = write_video(
        tmp_path / "v.mp4", index_frames(100, 64, 64), fps=25, codec="h264",
        wave=sine(440, 4.0, RATE), audio_codec="aac", faststart=True,
    )
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # depending on where the cut falls, the last packet is missing or half there
    with pytest.raises(MediaError, match=r"truncated audio: .* of the 4\.\d\d s|cannot decode .*cut\.mp4"):
        load_audio(cut, RATE)
    assert load_audio(cut, RATE, start=0.0, end=0.5).shape == (8000,)  # a window it still covers


def test_window_after_the_end_of_the_track(tmp_path):
    path = write_wav(tmp_path / "short.wav", sine(440, 1.0, RATE))
    with pytest.raises(MediaError, match="window starts at 2.0 s"):
        load_audio(path, RATE, start=2.0, end=3.0)
