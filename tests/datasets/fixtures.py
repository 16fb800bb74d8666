"""Fixture datasets in the real on-disk layouts: real metadata lines from ../shared/reference-data
(copied byte for byte, quirks included) and small synthetic media under the real file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.extractors.media_files import sine, write_video, write_wav

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference-data"
requires_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"{REFERENCE} is absent: these tests read the real CREMA-D/AVE/CrisisMMD split files kept there",
)


def raw_lines(path: Path) -> list[bytes]:
    """A file's lines as bytes with their own line ends (CRLF, BOM and mojibake untouched)."""
    return path.read_bytes().splitlines(keepends=True)


# ----------------------------------------------------------------------------- media


def small_frames(seconds: float, fps: int, value: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.full((max(1, int(round(seconds * fps))), height, width, 3), value, np.uint8)


def cremad_clip(root: Path, clip: str, *, audio: str = "ok", video: str = "ok", seconds: float = 2.5) -> None:
    """Write one CREMA-D clip. ``audio``/``video``: "ok", "missing", "empty" (0 bytes), "corrupt"
    (random bytes), "silent" (audio: a WAV without samples), "long" (audio: 60 s), "truncated"
    (audio: a WAV whose data stops short of its header)."""
    wav = root / "AudioWAV" / f"{clip}.wav"
    flv = root / "VideoFlash" / f"{clip}.flv"
    wav.parent.mkdir(parents=True, exist_ok=True)
    flv.parent.mkdir(parents=True, exist_ok=True)
    if audio in ("ok", "long", "truncated"):
        write_wav(wav, sine(220, 60.0 if audio == "long" else seconds, 16000))
        if audio == "truncated":
            wav.write_bytes(wav.read_bytes()[: 44 + 2000])
    elif audio == "silent":
        write_wav(wav, np.zeros(0, np.float32))
    _broken(wav, audio)
    if video == "ok":
        write_video(flv, small_frames(seconds, 10, 90), fps=10, codec="flv")
    _broken(flv, video)


def _broken(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def mp4_clip(path: Path, *, seconds: float = 10.0, with_audio: bool = True) -> None:
    """An AVE-like mp4: h264 frames whose grey level is 10 * second, aac audio (a 440 Hz tone)."""
    fps = 4
    frames = np.repeat((np.arange(int(seconds)) * 10 + 20).astype(np.uint8), fps)
    frames = np.broadcast_to(frames[:, None, None, None], (frames.size, 48, 64, 3))
    write_video(path, frames, fps=fps, codec="libx264", wave=sine(440, seconds, 16000) if with_audio else None,
                audio_codec="aac", gop=fps)


def image_file(path: Path, fmt: str, colour: tuple[int, int, int] = (200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, format=fmt)


# ----------------------------------------------------------------------------- real layouts


def ave_root(root: Path, video_ids: dict[str, str]) -> dict[str, list[bytes]]:
    """An AVE root whose Annotations.txt and split files hold the real lines of ``video_ids``
    (every line that mentions them, in the real order, real bytes) and whose ``AVE/`` folder
    holds an mp4 per id: ``video_ids[id]`` is "ok", "no-audio", "missing" or "corrupt"."""
    kept: dict[str, list[bytes]] = {}
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt"):
        lines = raw_lines(REFERENCE / "ave" / name)
        chosen = [line for i, line in enumerate(lines)
                  if (name == "Annotations.txt" and i == 0) or line.split(b"&")[-4].decode() in video_ids]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"".join(chosen))
        kept[name] = chosen
    for video_id, state in video_ids.items():
        path = root / "AVE" / f"{video_id}.mp4"
        if state in ("ok", "no-audio"):
            mp4_clip(path, with_audio=state == "ok")
        elif state == "corrupt":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    return kept


def crisismmd_root(root: Path, selection: dict[str, list[int]], *, missing: int = 0) -> list[dict[str, str]]:
    """A CrisisMMD_v2.0 root: for each real split TSV name in ``selection``, its header and the
    chosen data lines (0-based indices after the header; raw bytes) under
    ``crisismmd_datasplit_all/``, plus an image at every listed path (PNG or JPEG by its suffix)
    except for the first ``missing`` rows of the first file. Returns the rows as dicts."""
    split_dir = root / "crisismmd_datasplit_all"
    split_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for file_index, (name, indices) in enumerate(selection.items()):
        lines = raw_lines(REFERENCE / "crisismmd" / name)
        chosen = [lines[1 + i] for i in indices]
        (split_dir / name).write_bytes(lines[0] + b"".join(chosen))
        header = lines[0].decode().rstrip("\r\n").lower().split("\t")
        for n, line in enumerate(chosen):
            row = dict(zip(header, line.decode("utf-8").rstrip("\r\n").split("\t")))
            rows.append(row)
            if file_index == 0 and n < missing:
                continue
            image = root / row["image"]
            image_file(image, "PNG" if image.suffix == ".png" else "JPEG", colour=(30 * n % 255, 100, 150))
    return rows


def matching_lines(name: str, predicate, count: int = 1) -> list[int]:
    """Indices (after the header) of the first ``count`` lines of a reference CrisisMMD TSV whose
    decoded text satisfies ``predicate``."""
    lines = raw_lines(REFERENCE / "crisismmd" / name)[1:]
    return [i for i, line in enumerate(lines) if predicate(line.decode("utf-8"))][:count]
