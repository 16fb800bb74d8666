"""Opening media files: existence checks and PyAV containers whose failures become MediaError."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import av

from pipelines.extractors import MediaError

#: media whose decodable content stops this much short of the duration declared in its header
#: is truncated (an interrupted download or copy); short of this it is ordinary codec padding
TRUNCATION_TOLERANCE_S = 0.5


def check_file(path: Path) -> None:
    """Raise MediaError unless ``path`` is a non-empty regular file."""
    if not path.exists():
        raise MediaError(f"missing file: {path}")
    if not path.is_file():
        raise MediaError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"empty file (0 bytes): {path}")


@contextmanager
def open_container(path: Path) -> Iterator[av.container.InputContainer]:
    """Open ``path`` with PyAV; any FFmpeg error while opening or inside the block (demuxing,
    decoding, seeking) is raised as MediaError naming the file."""
    check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(f"unreadable media file {path}: {exc}") from exc
    try:
        yield container
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode {path}: {exc}") from exc
    finally:
        container.close()


def declared_duration(stream, container=None) -> float | None:
    """Seconds the header declares for ``stream`` or, given ``container``, for the whole file
    when the stream has no duration of its own (FLV); None when the header is silent."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container is not None and container.duration:
        return container.duration / av.time_base
    return None


def check_complete(path: Path, what: str, content_end: float, declared: float | None) -> None:
    """MediaError when the content stops more than TRUNCATION_TOLERANCE_S before ``declared``."""
    if declared is not None and content_end < declared - TRUNCATION_TOLERANCE_S:
        raise MediaError(
            f"truncated {what}: {path} holds {content_end:.2f} s of the {declared:.2f} s its header declares"
        )
