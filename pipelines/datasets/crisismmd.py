"""CrisisMMD v2.0: image-text tweets from seven 2017 disasters.

Read from the published split TSVs (``crisismmd_datasplit_all/``): tab-separated, with quotes that
are not CSV quotes (read with quoting off). Tweets are listed raw; their mojibake (UTF-8 text once
decoded as Windows-1252, ``Maradonaâ€™s``) is repaired, HTML entities unescaped and URLs stripped
by :func:`pipelines.extractors.text.clean_text` when prepare stores the ``text`` column and embeds
it. The ``image`` column is used as given,
relative to the root, so non-padded date folders (``5_9_2017``) and the ~1% PNG files need no
special handling.

* **Modalities**: ``image`` and ``tweet`` (the tweet text; its embedding is the modality, the
  cleaned text itself goes to the shards' ``text`` column). ``informative`` (2 classes) and
  ``humanitarian`` (8) have both; ``damage`` (3) is image-only. ``agreed=True`` reads the ``_agreed_lab_`` files (pairs whose
  text and image labels agree; informative and humanitarian only).
* **Label column**: ``label`` (the split file's pair label) by default; ``label_image`` reproduces
  FedMultimodal's humanitarian setting, ``label_text`` the text label.
* **Classes**: a fixed, sorted list per task, so indices do not depend on which file is read.
  A row with another label is rejected with its reason.
* ``dev`` is cmi's ``val``; **group** = ``event_name`` (natural per-disaster partitions); sample id
  = ``image_id`` (unique: a tweet with several images gives one sample per image).
* **Event-disjoint validation**: the release's splits share every event. ``val_by="group"`` with
  an explicit ``val_fraction`` moves the dev rows to train and carves val from whole events
  (about ``val_fraction`` of train + dev, seeded by ``seed``; see
  :func:`~pipelines.datasets.base.carve_group_validation`); without ``val_fraction`` it is a
  CmiError, since that replaces the official dev split. ``val_by="random"``, or ``val_fraction`` /
  ``seed`` without ``val_by="group"``, are CmiErrors too: dev is then used as it is.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipelines.datasets.base import (
    Listing, ModalitySource, Reject, Sample, check_val_by, layout_error, recarve_validation, resolve_root,
)
from pipelines.errors import CmiError

LAYOUT = """\
  ROOT/                                   (CrisisMMD_v2.0/, or the folder holding it)
    data_image/<event>/<D_M_YYYY>/<tweet_id>_<n>.jpg|png
    crisismmd_datasplit_all/
      task_informative_text_img_{train,dev,test}.tsv
      task_humanitarian_text_img_{train,dev,test}.tsv
      task_humanitarian_text_img_agreed_lab_{train,dev,test}.tsv   (for --agreed-labels)
      task_damage_text_img_{train,dev,test}.tsv                    (or task_damage_{train,dev,test}.tsv)"""

SPLIT_DIR = "crisismmd_datasplit_all"
IMAGE_DIR = "data_image"
RELEASE_DIR = "CrisisMMD_v2.0"
SPLITS = {"train": "train", "val": "dev", "test": "test"}
TASK_CLASSES = {
    "informative": ["informative", "not_informative"],
    "humanitarian": [
        "affected_individuals",
        "infrastructure_and_utility_damage",
        "injured_or_dead_people",
        "missing_or_found_people",
        "not_humanitarian",
        "other_relevant_information",
        "rescue_volunteering_or_donation_effort",
        "vehicle_damage",
    ],
    "damage": ["little_or_no_damage", "mild_damage", "severe_damage"],
}
LABEL_COLUMNS = ("label", "label_image", "label_text")
IMAGE_ONLY_TASKS = ("damage",)

def release_root(root: Path) -> Path:
    """``root`` itself, or its ``CrisisMMD_v2.0/`` subfolder when given the folder above it."""
    if not (root / SPLIT_DIR).is_dir() and (root / RELEASE_DIR / SPLIT_DIR).is_dir():
        return root / RELEASE_DIR
    return root


def split_file(root: Path, task: str, split: str, agreed: bool) -> Path:
    name = SPLITS[split]
    if task == "damage":
        candidates = [f"task_damage_text_img_{name}.tsv", f"task_damage_{name}.tsv"]
    else:
        candidates = [f"task_{task}_text_img_{'agreed_lab_' if agreed else ''}{name}.tsv"]
    for candidate in candidates:
        if (root / SPLIT_DIR / candidate).is_file():
            return root / SPLIT_DIR / candidate
    raise layout_error("crisismmd", root, f"{SPLIT_DIR}/{candidates[0]} not found", LAYOUT)


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header (lower-cased) and rows of a CrisisMMD TSV, quotes taken literally."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise CmiError(f"{path} is empty; restore it from the CrisisMMD release.")
    return [h.strip().lower() for h in rows[0]], rows[1:]


def load(
    root: str | Path | None,
    *,
    task: str = "informative",
    agreed: bool = False,
    label_column: str = "label",
    val_by: str | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    dataset: str = "crisismmd",
) -> Listing:
    """List CrisisMMD's samples for ``task`` in split-file order (train, val, test); ``val_by``,
    ``val_fraction`` and ``seed`` as in the module docstring."""
    if task not in TASK_CLASSES:
        raise CmiError(f"--task must be one of {', '.join(TASK_CLASSES)}, got {task!r}.")
    if agreed and task in IMAGE_ONLY_TASKS:
        raise CmiError("--agreed-labels exists for the informative and humanitarian tasks only; drop it for damage.")
    if label_column not in LABEL_COLUMNS:
        raise CmiError(f"--label-column must be one of {', '.join(LABEL_COLUMNS)}, got {label_column!r}.")
    if task in IMAGE_ONLY_TASKS and label_column != "label":
        raise CmiError("the damage task has a single label column; drop --label-column.")
    if check_val_by(val_by) == "random":
        raise CmiError("crisismmd's validation split is the release's dev files, used as they are, so --val-by random "
                       "does not apply: drop it (or use --val-by group --val-fraction F for an event-disjoint val).")
    if val_by is None and (val_fraction is not None or seed is not None):
        raise CmiError("--val-fraction and --seed apply to crisismmd only with --val-by group (which replaces the "
                       "dev split by whole events carved from train); drop them to keep the release's dev split.")
    root_path = release_root(resolve_root(root, dataset, LAYOUT))
    if not (root_path / SPLIT_DIR).is_dir():
        raise layout_error(dataset, root_path, f"{SPLIT_DIR}/ not found", LAYOUT)

    classes = TASK_CLASSES[task]
    index = {name: i for i, name in enumerate(classes)}
    with_text = task not in IMAGE_ONLY_TASKS
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for split in SPLITS:
        path = split_file(root_path, task, split, agreed)
        header, rows = read_tsv(path)
        needed = ["event_name", "image_id", "image", label_column] + (["tweet_text"] if with_text else [])
        absent = [c for c in needed if c not in header]
        if absent:
            raise CmiError(f"{path} lacks the column(s) {', '.join(absent)}; is it a CrisisMMD v2.0 split file?")
        col = {name: header.index(name) for name in needed}
        for number, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                rejects.append(Reject(f"{path.name} line {number}", split, None, str(path),
                                      f"malformed row: {len(row)} fields, expected {len(header)}"))
                continue
            image_id = row[col["image_id"]].strip()
            image = str(root_path / row[col["image"]].strip())
            label = row[col[label_column]].strip()
            if label not in index:
                rejects.append(Reject(image_id, split, None, image, f"unknown {task} label {label!r} in {label_column}"))
                continue
            samples.append(Sample(
                id=image_id,
                label=index[label],
                split=split,
                group=row[col["event_name"]].strip(),
                media={"image": image},
                text=row[col["tweet_text"]] if with_text else None,
            ))
    info = {"split": "official", "task": task, "agreed_labels": agreed, "label_column": label_column}
    if val_by == "group":
        dev = f"crisismmd's dev split files ({SPLIT_DIR}/*_dev.tsv)"
        samples = recarve_validation(samples, val_fraction, seed or 0, given=dev)
        info.update(split="official (dev moved to train, val carved by event)", val_by=val_by,
                    val_fraction=val_fraction, seed=seed or 0)
    modalities = [ModalitySource("image", "image")] + ([ModalitySource("tweet", "text")] if with_text else [])
    return Listing(
        dataset=dataset,
        layout=LAYOUT,
        root=root_path,
        classes=classes,
        modalities=modalities,
        samples=samples,
        rejects=rejects,
        info=info,
        media_dirs={"image": root_path / IMAGE_DIR},
        group_name="event",
    )
