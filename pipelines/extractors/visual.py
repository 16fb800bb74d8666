"""Video frames: k frames at evenly spaced times, decoded with PyAV by seeking near each one,
then centre-cropped (or face-cropped) and resized to a square.

Why seek: a 2.5 s CREMA-D clip has 75 frames but only 3 are kept. A cheap demux pass (packets
only, no decoding) lists every frame's timestamp and the keyframes; each wanted frame is then
decoded from the keyframe before it, continuing forward instead of seeking whenever no keyframe
lies between the previous frame and the next. That decodes a handful of frames per clip instead
of all of them, and the same pass measures the real content length, which detects truncation.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.media import check_complete, declared_duration, open_container

# Each call works on a few small frames: OpenCV's thread pool costs more than it saves there and,
# with one prepare worker per core, only oversubscribes the CPU.
cv2.setNumThreads(1)

#: faces are searched on a copy whose shorter side is this long (detection cost grows with area;
#: a talking head spans a third of the frame or more, well above the cascade's 24-pixel window)
FACE_SEARCH_SIZE = 144
#: the square face crop is this many times the detected box's side
FACE_MARGIN = 1.3


@dataclass(frozen=True)
class VisualParams:
    """Which frames and how they are framed: ``num_frames`` frames per clip, squared to
    ``image_size`` pixels; ``face_crop`` crops the largest detected face (centre crop when none)."""

    num_frames: int = 3
    image_size: int = 112
    face_crop: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise CmiError(f"the number of frames per clip must be at least 1, got {self.num_frames}")
        if self.image_size < 8:
            raise CmiError(f"the image size must be at least 8 pixels, got {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    def output_shape(self) -> tuple[int, int, int, int]:
        """(frames, size, size, RGB) of one clip's payload."""
        return self.num_frames, self.image_size, self.image_size, 3


def frame_times(duration: float, num_frames: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Times (s) of the frames to keep: the centres of ``num_frames`` equal segments of the clip
    ``[0, duration]``, or of the ``[start, end]`` window clipped to the clip. Raises MediaError
    when the window does not overlap the clip."""
    low = 0.0 if start is None else max(0.0, float(start))
    high = float(duration) if end is None else min(float(duration), float(end))
    if not high > low:
        raise MediaError(f"frame window [{low:.2f}, {high:.2f}] s is empty for a clip of {duration:.2f} s")
    return low + (np.arange(num_frames) + 0.5) * (high - low) / num_frames


def extract_frames(path, params: VisualParams, start: float | None = None, end: float | None = None) -> np.ndarray:
    """uint8 (k, S, S, 3) RGB frames of the first video stream of ``path`` (any container PyAV
    reads: flv, mp4, ...) at :func:`frame_times` of its real length (or of the ``[start, end]``
    window, in seconds from the start of the video). Each is the frame on screen at that time.
    Raises MediaError for a missing, empty, unreadable or truncated file or one without video."""
    path = Path(path)
    with open_container(path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # a few frames per clip: decoder threads only add latency
        index = _PacketIndex.read(container, stream, path)
        times = frame_times(index.duration, params.num_frames, start, end)
        wanted = index.frame_at(times)
        decoded = _decode(container, stream, index, np.unique(wanted), path)
    frames = np.stack([decoded[pts] for pts in wanted])
    return face_crops(frames, params.image_size) if params.face_crop else resize_center_crop(frames, params.image_size)


@dataclass(frozen=True)
class _PacketIndex:
    """Every video packet's timestamp (stream time base) in presentation order, the keyframes',
    and the stream's first timestamp and real duration."""

    pts: np.ndarray
    keyframe_pts: np.ndarray
    first: int
    duration: float
    time_base: float

    @classmethod
    def read(cls, container, stream, path: Path) -> "_PacketIndex":
        pts, keyframe = [], []
        ends: dict[int, int] = {}  # stream index -> end of its last packet (its own ticks)
        for packet in container.demux():
            start = packet.pts
            if start is None or packet.size == 0:
                continue
            number = packet.stream_index
            ends[number] = max(ends.get(number, 0), start + (packet.duration or 0))
            if number == stream.index:
                pts.append(start)
                keyframe.append(packet.is_keyframe)
        if not pts:
            raise MediaError(f"no video frames in {path}")
        content_end = max(end * float(container.streams[number].time_base) for number, end in ends.items())
        check_complete(path, "video", content_end, declared_duration(stream, container))
        order = np.argsort(pts, kind="stable")
        pts_array, keyframe_array = np.array(pts, np.int64)[order], np.array(keyframe, bool)[order]
        time_base = float(stream.time_base)
        duration = (pts_array[-1] + _frame_ticks(stream, pts_array) - pts_array[0]) * time_base
        keyframes = pts_array[keyframe_array] if keyframe_array.any() else pts_array[:1]
        return cls(pts_array, keyframes, int(pts_array[0]), float(duration), time_base)

    def frame_at(self, times: np.ndarray) -> np.ndarray:
        """Timestamp of the frame on screen at each time (s from the first frame)."""
        ticks = self.first + np.floor(times / self.time_base + 1e-6).astype(np.int64)
        return self.pts[np.searchsorted(self.pts, ticks, side="right") - 1]

    def keyframe_before(self, pts: int) -> int:
        position = np.searchsorted(self.keyframe_pts, pts, side="right") - 1
        return int(self.keyframe_pts[max(position, 0)])


def _frame_ticks(stream, pts: np.ndarray) -> int:
    """One frame's duration in stream ticks: from the frame rate, else the typical pts step."""
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return max(1, int(round(1 / (float(rate) * float(stream.time_base)))))
    steps = np.diff(pts)
    return int(np.median(steps)) if steps.size else 0


def _decode(container, stream, index: _PacketIndex, wanted: np.ndarray, path: Path) -> dict[int, np.ndarray]:
    """RGB arrays of the frames with timestamps ``wanted`` (sorted). Seeks to the keyframe before
    each one unless decoding on from the current frame gets there without passing a keyframe."""
    images: dict[int, np.ndarray] = {}
    frames = None
    current = None
    for pts in wanted.tolist():
        keyframe = index.keyframe_before(pts)
        if current is None or keyframe > current.pts:
            container.seek(keyframe, stream=stream, backward=True)
            frames = (frame for frame in container.decode(stream) if frame.pts is not None)
            current = None
        while current is None or current.pts < pts:
            current = next(frames, None)
            if current is None:
                raise MediaError(f"cannot decode the frame at {(pts - index.first) * index.time_base:.2f} s of {path}")
        # the wanted frame itself when it decodes; otherwise the next one that does
        images[pts] = _reformatter().reformat(current, format="rgb24").to_ndarray()
    return images


_THREAD = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's colour converter: reusing it reuses FFmpeg's scaler context, whose set-up
    costs more than converting a frame (VideoFrame.to_ndarray builds a new one every call)."""
    if not hasattr(_THREAD, "reformatter"):
        _THREAD.reformatter = VideoReformatter()
    return _THREAD.reformatter


def resize_center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3): the centred square of side min(H, W), resized
    (area averaging when shrinking), i.e. shorter side to ``size`` then centre crop."""
    _, height, width, _ = images.shape
    return _crop_resize(images, [_center_box(height, width)] * len(images), size)


def face_crops(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, size, size, 3): each frame cropped to the square around its largest
    face (:func:`face_box`), or centre-cropped when it shows none."""
    _, height, width, _ = images.shape
    return _crop_resize(images, [face_box(image) or _center_box(height, width) for image in images], size)


def _center_box(height: int, width: int) -> tuple[int, int, int]:
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def _crop_resize(images: np.ndarray, boxes: list[tuple[int, int, int]], size: int) -> np.ndarray:
    """Crop each image to its (top, left, side) square and resize it to ``size``; cv2.resize
    takes one image at a time (area averaging allows at most 4 channels), hence one call each."""
    return np.stack(
        [
            cv2.resize(
                np.ascontiguousarray(image[top : top + side, left : left + side]),
                (size, size),
                interpolation=cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR,
            )
            for image, (top, left, side) in zip(images, boxes)
        ]
    )


@lru_cache(maxsize=1)
def _face_detector() -> cv2.CascadeClassifier:
    detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    if detector.empty():
        raise CmiError(
            "OpenCV's bundled Haar face cascade is missing: reinstall opencv-python-headless (<5), or drop --face-crop"
        )
    return detector


def face_box(image: np.ndarray) -> tuple[int, int, int] | None:
    """(top, left, side) of a square around the largest frontal face in an RGB image, the
    detected box enlarged by FACE_MARGIN and shifted to stay inside the image; None if no face."""
    height, width, _ = image.shape
    scale = FACE_SEARCH_SIZE / min(height, width)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    min_face = max(24, FACE_SEARCH_SIZE // 6)
    boxes = _face_detector().detectMultiScale(small, scaleFactor=1.15, minNeighbors=5, minSize=(min_face, min_face))
    if len(boxes) == 0:
        return None
    x, y, w, h = (np.asarray(max(boxes, key=lambda box: box[2] * box[3]), float) / scale).tolist()
    side = int(min(round(max(w, h) * FACE_MARGIN), height, width))
    top = int(np.clip(round(y + h / 2 - side / 2), 0, height - side))
    left = int(np.clip(round(x + w / 2 - side / 2), 0, width - side))
    return top, left, side
