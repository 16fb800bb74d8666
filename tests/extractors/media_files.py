"""Writers of small media files for extractor tests and the prepare benchmark (PyAV, soundfile)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile


def sine(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int = 16000) -> Path:
    """16-bit PCM WAV (CREMA-D's format); ``wave`` is (L,) mono or (L, C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, sample_rate, subtype="PCM_16", format="WAV")
    return path


def index_frames(count: int, height: int, width: int) -> np.ndarray:
    """(count, H, W, 3) grey frames that encode their index in 16-level steps: left half
    ``16 * (index // 16) + 8``, right half ``16 * (index % 16) + 8`` (up to 256 frames). The split
    is at the centre so it survives a centre crop; read back with :func:`decoded_indices`."""
    index = np.arange(count)
    frames = np.empty((count, height, width, 3), np.uint8)
    frames[:, :, : width // 2] = (16 * (index // 16) + 8)[:, None, None, None]
    frames[:, :, width // 2 :] = (16 * (index % 16) + 8)[:, None, None, None]
    return frames


def decoded_indices(frames: np.ndarray) -> list[int]:
    """Frame indices encoded by :func:`index_frames`, read at the middle of each half."""
    height, width = frames.shape[1:3]
    left = frames[:, height // 2, width // 4].mean(axis=-1)
    right = frames[:, height // 2, 3 * width // 4].mean(axis=-1)
    return (16 * np.round((left - 8) / 16) + np.round((right - 8) / 16)).astype(int).tolist()


def write_video(
    path: Path,
    frames: np.ndarray | None,
    fps: int = 30,
    codec: str = "flv",
    wave: np.ndarray | None = None,
    sample_rate: int = 16000,
    audio_codec: str = "libmp3lame",
    gop: int = 12,
    faststart: bool = False,
) -> Path:
    """A video file (container from the suffix: .flv, .mp4) with ``frames`` (T, H, W, 3) RGB
    encoded as ``codec`` at ``fps`` (keyframe every ``gop`` frames), and/or a mono ``wave``
    encoded as ``audio_codec``. CREMA-D: flv + flv (Sorenson) + mp3; AVE: mp4 + h264 + aac.
    ``faststart`` puts an mp4's index first, so that a truncated copy still opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        video = audio = None
        if frames is not None:
            video = container.add_stream(codec, rate=fps)
            video.height, video.width = frames.shape[1:3]
            video.pix_fmt = "yuv420p"
            video.codec_context.gop_size = gop
        if wave is not None:
            audio = container.add_stream(audio_codec, rate=sample_rate)
            audio.layout = "mono"
        if video is not None:
            for image in frames:
                container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
            container.mux(video.encode(None))
        if audio is not None:
            chunk = audio.codec_context.frame_size or 1024
            for first in range(0, wave.size, chunk):
                samples = wave[None, first : first + chunk].astype(np.float32)
                piece = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
                piece.sample_rate = sample_rate
                piece.pts = first
                container.mux(audio.encode(piece))
            container.mux(audio.encode(None))
    return path
