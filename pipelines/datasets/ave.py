"""AVE: 4,143 annotated audio-visual events in 4,097 ten-second YouTube clips, 28 classes.

Read as published: ``Annotations.txt`` and ``{train,val,test}Set.txt`` with ``&``-separated
fields ``Category&VideoID&Quality&StartTime&EndTime``. Class names contain commas and parentheses
(``Male speech, man speaking``, ``Frying (food)``), so a line is split on ``&`` only, from the
right (a category could even contain ``&``).

Decisions (all visible in ``rejects.parquet``):

* **Duplicates**: 46 videos carry two labels. Within one split the first line is kept and later
  ones are rejected ("duplicate video id in <split>"). A video listed in two splits is kept in
  both (that is the authors' split); its id in the later split gets a suffix, ``<VideoID>@val`` or
  ``<VideoID>@test``, so ids stay unique.
* **Empty event window** (``...&0&0``, one train line): rejected with its reason.
* **Classes** in order of first appearance in ``Annotations.txt`` (the AVE authors' order).
* **Group**: none. AVE has no natural client attribute (no uploader, place or recording
  session); partition it with a Dirichlet split. The category is the label, not a group. So
  ``val_by`` (``--val-by``) is refused: val is the release's ``valSet.txt`` as it is, and a
  group-disjoint val cannot be made.
* Only the annotated event window is used: audio cut to [start, end] and tiled to 10 s by
  default, frames taken evenly inside the window.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.datasets.base import Listing, ModalitySource, Reject, Sample, layout_error, read_lines, resolve_root
from pipelines.errors import CmiError

LAYOUT = """\
  ROOT/                          (the unzipped AVE_Dataset folder)
    Annotations.txt              Category&VideoID&Quality&StartTime&EndTime (+ header)
    trainSet.txt                 same fields, no header
    valSet.txt
    testSet.txt
    AVE/<VideoID>.mp4            10 s clips (audio + video)"""

VIDEO_DIR = "AVE"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
ANNOTATIONS = "Annotations.txt"
HEADER_PREFIX = "Category&VideoID"
MODALITIES = [ModalitySource("audio", "audio"), ModalitySource("visual", "frames")]


def parse_line(line: str) -> tuple[str, str, str, float, float]:
    """``(category, video_id, quality, start, end)`` of one annotation line.

    Raises ValueError on a malformed line.
    """
    parts = line.rsplit("&", 4)
    if len(parts) != 5:
        raise ValueError(f"expected 5 '&'-separated fields, got {len(parts)}")
    category, video_id, quality, start, end = (p.strip() for p in parts)
    if not category or not video_id:
        raise ValueError("empty category or video id")
    return category, video_id, quality, float(start), float(end)


def load(root: str | Path | None, *, val_by: str | None = None, dataset: str = "ave") -> Listing:
    """List AVE's annotated events under ``root`` in split-file order (train, val, test).

    ``val_by`` other than None is a CmiError (see the module docstring)."""
    if val_by is not None:
        raise CmiError(
            f"--val-by does not apply to {dataset}: AVE has no group column (no speaker, uploader or site), so a "
            "group-disjoint validation split cannot be made, and its val split is the release's valSet.txt, used "
            "as it is. Drop --val-by."
        )
    root_path = resolve_root(root, dataset, LAYOUT)
    missing = [name for name in (ANNOTATIONS, *SPLIT_FILES.values()) if not (root_path / name).is_file()]
    if missing:
        raise layout_error(dataset, root_path, f"{', '.join(missing)} not found", LAYOUT)

    classes: list[str] = []
    for line in read_lines(root_path / ANNOTATIONS):
        if line.startswith(HEADER_PREFIX):
            continue
        try:
            category = parse_line(line)[0]
        except ValueError:
            continue  # a malformed annotation line is reported when a split file lists it
        if category not in classes:
            classes.append(category)
    index = {name: i for i, name in enumerate(classes)}

    samples: list[Sample] = []
    rejects: list[Reject] = []
    kept_in: dict[str, dict[str, Sample]] = {}  # video id -> split -> kept sample
    for split, filename in SPLIT_FILES.items():
        split_file = root_path / filename
        for number, line in enumerate(read_lines(split_file), start=1):
            if line.startswith(HEADER_PREFIX):
                continue
            where = f"{filename} line {number}"
            try:
                category, video_id, _, start, end = parse_line(line)
            except ValueError as exc:
                rejects.append(Reject(where, split, None, str(split_file), f"malformed line ({exc}): {line[:80]!r}"))
                continue
            path = str(root_path / VIDEO_DIR / f"{video_id}.mp4")
            earlier = kept_in.setdefault(video_id, {})
            if split in earlier:
                first = earlier[split]
                rejects.append(Reject(
                    video_id, split, None, path,
                    f"duplicate video id in {split} ({where}: {category!r}); kept the first line "
                    f"({classes[first.label]!r} {first.window[0]:g}-{first.window[1]:g} s)",
                ))
                continue
            if category not in index:
                rejects.append(Reject(video_id, split, None, path, f"category {category!r} is not in {ANNOTATIONS}"))
                continue
            if not end > start:
                rejects.append(Reject(video_id, split, None, path, f"empty event window [{start:g}, {end:g}] s ({where})"))
                continue
            sample_id = video_id if not earlier else f"{video_id}@{split}"
            sample = Sample(sample_id, index[category], split, None, {"audio": path, "visual": path}, window=(start, end))
            earlier[split] = sample
            samples.append(sample)
    return Listing(
        dataset=dataset,
        layout=LAYOUT,
        root=root_path,
        classes=classes,
        modalities=list(MODALITIES),
        samples=samples,
        rejects=rejects,
        info={"split": "official"},
        defaults={"audio_duration": 10.0},
        media_dirs={"audio": root_path / VIDEO_DIR, "visual": root_path / VIDEO_DIR},
    )
