"""Audio: decode to mono float32 at a fixed rate, tile/crop to a fixed duration, and turn a batch
of waves into log spectrograms in one vectorised librosa call."""

from __future__ import annotations

import wave as wavfile
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import librosa
import numpy as np
import soundfile

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.media import check_complete, check_file, declared_duration, open_container

AUDIO_FEATURES = ("stft", "logmel")
#: added before the log so that silent bins stay finite (the literature's log(|S| + 1e-7))
LOG_EPS = 1e-7
#: read with libsndfile; anything else (mp3 in flv, aac in mp4, ...) is decoded with PyAV
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


@dataclass(frozen=True)
class AudioParams:
    """How audio becomes a spectrogram.

    ``features="stft"`` is the modality-imbalance literature's log-magnitude STFT,
    ``log(|STFT| + 1e-7)``; ``"logmel"`` is ``log(mel power + 1e-7)`` with ``n_mels`` bands.
    Waves are tiled (repeated) or cropped to ``duration`` seconds at ``sample_rate`` first, and
    librosa's centred frames give ``1 + samples // hop_length`` frames.
    """

    features: str = "stft"
    sample_rate: int = 16000
    duration: float = 3.0
    n_fft: int = 512
    hop_length: int = 353
    n_mels: int = 128

    def __post_init__(self) -> None:
        if self.features not in AUDIO_FEATURES:
            raise CmiError(f"unknown audio features {self.features!r}: choose one of {', '.join(AUDIO_FEATURES)}")
        for name in ("sample_rate", "duration", "n_fft", "hop_length", "n_mels"):
            if not getattr(self, name) > 0:
                raise CmiError(f"audio {name} must be positive, got {getattr(self, name)!r}")

    @property
    def num_samples(self) -> int:
        """Length of every fitted wave."""
        return int(round(self.sample_rate * self.duration))

    def to_dict(self) -> dict:
        return asdict(self)

    def output_shape(self) -> tuple[int, int]:
        """(frequency bins, frames) of one spectrogram."""
        bins = self.n_fft // 2 + 1 if self.features == "stft" else self.n_mels
        return bins, 1 + self.num_samples // self.hop_length


def load_audio(path, sample_rate: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate`` (channels averaged), optionally only
    the ``[start, end)`` window in seconds. WAV/FLAC/OGG are read with soundfile, audio tracks of
    other containers (mp4, flv, mp3) with PyAV. Raises MediaError for a missing, empty, unreadable
    or truncated file, a container without an audio track, or a window outside the track."""
    path = Path(path)
    check_file(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        wave, native_rate = _read_soundfile(path, start, end)
    else:
        wave, native_rate = _read_av(path, sample_rate, start, end)
    if wave.size == 0:
        window = "" if start is None and end is None else f" in the window [{start}, {end}) s"
        raise MediaError(f"empty audio: no samples{window} in {path}")
    if native_rate != sample_rate:
        wave = librosa.resample(wave, orig_sr=native_rate, target_sr=sample_rate)
    return wave.astype(np.float32, copy=False)


def _window_samples(
    rate: int, total: int, start: float | None, end: float | None, path: Path, origin: float = 0.0
) -> tuple[int, int]:
    """Sample range of the [start, end) window in a wave of ``total`` samples whose first sample
    plays at ``origin`` seconds."""
    first = max(0, int(round(((start or 0.0) - origin) * rate)))
    stop = total if end is None else min(total, int(round((end - origin) * rate)))
    if first >= total > 0:
        track_end = origin + total / rate
        raise MediaError(f"audio window starts at {start} s but the track of {path} ends at {track_end:.2f} s")
    return first, max(first, stop)


def _read_soundfile(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    try:
        with soundfile.SoundFile(str(path)) as sound:
            rate, frames = sound.samplerate, sound.frames
            first, stop = _window_samples(rate, frames, start, end, path)
            sound.seek(first)
            data = sound.read(stop - first, dtype="float32", always_2d=True)
    except soundfile.SoundFileError as exc:
        raise MediaError(f"unreadable audio file {path}: {exc}") from exc
    declared = _declared_wav_frames(path)
    if declared is not None and frames < declared:
        raise MediaError(f"truncated audio: {path} holds {frames} of the {declared} samples its header declares")
    return data.mean(axis=1), rate


def _declared_wav_frames(path: Path) -> int | None:
    """Sample count in a PCM WAV header (libsndfile silently shortens it to what the file holds,
    so comparing both reveals a truncated download); None when not a PCM WAV or a streaming
    header whose size fields are placeholders."""
    if path.suffix.lower() != ".wav":
        return None
    try:
        with wavfile.open(str(path), "rb") as header:
            frames, frame_bytes = header.getnframes(), header.getsampwidth() * header.getnchannels()
    except (wavfile.Error, EOFError):
        return None
    return frames if 0 < frames * frame_bytes < 0xFFFFFF00 else None


def _read_av(path: Path, sample_rate: int, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio track, resampled (not remixed) to ``sample_rate``; decoding starts
    at a seek near ``start`` and stops once past ``end``. A track that ends before ``end`` is
    checked against the duration its header declares (mp4 tracks have one)."""
    with open_container(path) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio track in {path}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        if start:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        chunks: list[np.ndarray] = []
        origin = None  # time of the first decoded sample
        for frame in container.decode(stream):
            if origin is None:
                origin = float(frame.time or 0.0)
            chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
            if end is not None and frame.time is not None and frame.time > end:
                break
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))
        if not chunks:
            return np.zeros(0, np.float32), sample_rate
        wave = np.concatenate(chunks, axis=1).mean(axis=0)
        origin = origin or 0.0
        if end is None or origin + wave.size / sample_rate < end:
            check_complete(path, "audio", origin + wave.size / sample_rate, declared_duration(stream))
    first, stop = _window_samples(sample_rate, wave.size, start, end, path, origin)
    return wave[first:stop], sample_rate


def fit_duration(wave: np.ndarray, sample_rate: int, duration: float) -> np.ndarray:
    """Repeat a short wave end to end, or keep the beginning of a long one, so that it lasts
    exactly ``duration`` seconds (``round(sample_rate * duration)`` samples)."""
    if wave.size == 0:
        raise ValueError("cannot fit an empty wave to a duration")
    return np.resize(wave, int(round(sample_rate * duration)))


def audio_features(waves: np.ndarray, params: AudioParams) -> np.ndarray:
    """Spectrograms of a batch of fitted waves: (B, L) -> (B, F, T) float32, one librosa call."""
    waves = np.asarray(waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != params.num_samples:
        raise ValueError(f"expected waves of shape (B, {params.num_samples}), got {waves.shape}")
    if params.features == "stft":
        spectrum = np.abs(librosa.stft(waves, n_fft=params.n_fft, hop_length=params.hop_length))
    else:
        spectrum = librosa.feature.melspectrogram(
            y=waves, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length, n_mels=params.n_mels
        )
    return np.log(spectrum + LOG_EPS).astype(np.float32, copy=False)
