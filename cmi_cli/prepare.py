"""`cmi prepare DATASET`: raw dataset folder -> validated feature shards in the workspace.

Examples::

    cmi prepare synthetic                                 # demo data: generate + prepare (~480 clips)
    cmi prepare cremad --root ~/data/CREMA-D              # literature split, 10% of train -> val
    cmi prepare cremad --root ~/data/CREMA-D --split actor --name cremad-actors
    cmi prepare cremad --root ~/data/CREMA-D --val-by group   # literature test split, actor-disjoint val
    cmi prepare synthetic --shift 1 --split actor        # actor effects + unseen actors in val and test
    cmi prepare ave --root ~/data/AVE_Dataset --frames 5
    cmi prepare crisismmd --root ~/data/CrisisMMD_v2.0 --task humanitarian --text-model ~/models/bert-base-uncased
    cmi prepare crisismmd --root ~/data/CrisisMMD_v2.0 --task damage
    cmi prepare manifest --root my-data/manifest.csv --modality audio=audio@video --modality visual=frames@video
    cmi prepare manifest --root my-data/manifest.csv --modality ecg=array:signal@ecg --array-length 500
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.table import Table

from cmi_cli.common import console, user_errors, workspace
from pipelines.datasets import DATASETS
from pipelines.datasets.base import DATA_ROOT_ENV
from pipelines.datasets.base import VAL_BY
from pipelines.prepare import (
    DEFAULT_MAX_REJECT_FRACTION, DEFAULT_SHARD_SIZE, FeatureOptions, PrepareResult, ProgressHook, RunOptions,
    Summary, TooManyRejects, build_listing, prepare_listing,
)
from pipelines.shards import ModalitySpec, modality_specs

INPUT, SPLIT, DATASET_OPTS, FEATURES, RUN = "Input", "Split", "Dataset-specific", "Features", "Run"
DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)


class RichProgress(ProgressHook):
    """prepare's progress as a rich bar: samples (or clips) done, kept / rejected counts, ETA."""

    def start(self, description: str, total: int, completed: int = 0, kept: int | None = None,
              dropped: int | None = None) -> None:
        self.counting = kept is not None
        self.kept, self.dropped = kept or 0, dropped or 0
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=completed, counts=self._counts())

    def advance(self, units: int, kept: int = 0, dropped: int = 0) -> None:
        self.kept += kept
        self.dropped += dropped
        self.bar.update(self.task, advance=units, counts=self._counts())

    def _counts(self) -> str:
        return f"[green]ok {self.kept}[/] [red]rejected {self.dropped}[/]" if self.counting else ""

    def stop(self) -> None:
        self.bar.stop()


def print_summary(summary: Summary, modalities: list[str]) -> None:
    table = Table(title="prepared samples", show_edge=False)
    table.add_column("split")
    table.add_column("listed", justify="right")
    table.add_column("kept", justify="right")
    for m in modalities:
        table.add_column(f"with {m}", justify="right")
    groups = summary.groups
    if groups is not None:
        table.add_column(f"{summary.group_name}s", justify="right")
    for split, listed in summary.listed.items():
        group_count = [str(len(groups[split]))] if groups is not None else []
        table.add_row(split, str(listed), str(summary.kept[split]), *(str(summary.present[m][split]) for m in modalities),
                      *group_count)
    console.print(table)
    for note in shared_group_notes(summary):
        console.print(f"[yellow]{note}[/]")
    if summary.reasons:
        console.print(f"rejects: {summary.dropped} samples dropped, {summary.affected} of {summary.total} with a reject "
                      f"({summary.reject_fraction:.1%}); reasons:")
        reasons = Table(show_edge=False)
        reasons.add_column("modality")
        reasons.add_column("reason")
        reasons.add_column("rows", justify="right")
        for modality, reason, count in summary.reasons[:10]:
            reasons.add_row(modality, reason, str(count))
        if len(summary.reasons) > 10:
            reasons.add_row("", f"... {len(summary.reasons) - 10} more kinds (see rejects.parquet)", "")
        console.print(reasons)


def shared_group_notes(summary: Summary) -> list[str]:
    """One line for each of val and test that shares groups with train, saying what it means."""
    def count(n: int) -> str:
        return f"{n} {summary.group_name}{'' if n == 1 else 's'}"

    noun, shared, notes = summary.group_name, summary.shared_groups, []
    if shared.get("train/val"):
        notes.append(f"val shares {count(shared['train/val'])} with train: validation is not {noun}-independent "
                     f"(the model picked as best on val may just know those {noun}s); --val-by group fixes it")
    if shared.get("train/test"):
        fix = "; --split actor keeps them apart" if noun == "actor" else ""
        notes.append(f"test shares {count(shared['train/test'])} with train: the test score is on {noun}s seen "
                     f"in training{fix}")
    return notes


def print_modalities(specs: list[ModalitySpec]) -> None:
    """Each stored modality: name, kind, per-sample shape and dtype."""
    table = Table(title="modalities", show_edge=False)
    for column in ("modality", "kind", "shape", "dtype"):
        table.add_column(column)
    for spec in specs:
        shape = "×".join(map(str, spec.shape))
        if spec.kind == "sequence":  # (L, C + 1): the last channel is the presence mask
            shape += " (last channel: mask)"
        table.add_row(spec.name, spec.kind, shape, spec.dtype)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("prepare", help="Turn a raw dataset folder into validated feature shards.\n\n" + HELP,
                no_args_is_help=True)(prepare_command)


HELP = f"""DATASET is one of {', '.join(DATASETS)}. Output: <workspace>/datasets/NAME/ (zstd Parquet shards, rejects.parquet, manifest.json), which becomes the workspace's latest dataset.

Bad media never stop the run: a modality that cannot be read is stored absent (the sample is kept if another modality is left) and every problem is listed with its reason in rejects.parquet. The run fails when more than --max-reject-fraction of the samples have a reject.

Interrupted runs resume where they stopped (finished shards are kept); re-running a finished prepare does nothing unless --force.

\b
Examples:
  cmi prepare synthetic
  cmi prepare cremad --root ~/data/CREMA-D --split actor --name cremad-actors
  cmi prepare cremad --root ~/data/CREMA-D --val-by group
  cmi prepare synthetic --shift 1 --split actor
  cmi prepare ave --root ~/data/AVE_Dataset
  cmi prepare crisismmd --root ~/data/CrisisMMD_v2.0 --task informative --text-model ~/models/bert
  cmi prepare manifest --root my-data/manifest.csv"""


@user_errors
def prepare_command(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., click_type=click.Choice(DATASETS), help="Which dataset layout to read.", show_default=False),
    root: Optional[Path] = typer.Option(
        None, "--root", show_default=False, rich_help_panel=INPUT,
        help=f"The dataset folder as published (a manifest CSV or its folder for `manifest`); default ${DATA_ROOT_ENV}. "
             "For `synthetic`: where to write the generated clips (default <workspace>/raw/synthetic-cremad; "
             f"${DATA_ROOT_ENV} is not used).",
    ),
    name: Optional[str] = typer.Option(None, "--name", show_default=False, rich_help_panel=INPUT,
                                       help="Name of the dataset artifact in the workspace. \\[default: DATASET]"),
    modalities: Optional[str] = typer.Option(
        None, "--modalities", show_default=False, rich_help_panel=INPUT,
        help="Comma-separated subset of the dataset's modalities to prepare (cremad/ave/synthetic: audio,visual; "
             "crisismmd: image,tweet). \\[default: all]"),
    split: Optional[str] = typer.Option(
        None, "--split", click_type=click.Choice(["literature", "actor"]), show_default=False, rich_help_panel=SPLIT,
        help="cremad/synthetic: `literature` (the split of the modality-imbalance papers, shipped with cmi) or "
             "`actor` (actor-disjoint, seeded). \\[default: literature]"),
    val_by: Optional[str] = typer.Option(
        None, "--val-by", click_type=click.Choice(list(VAL_BY)), show_default=False, rich_help_panel=SPLIT,
        help="How val is carved from train: `random` (class-stratified samples; val then shares the training "
             "speakers/sites, which fools best-on-val model selection) or `group` (whole groups: cremad/synthetic "
             "actors, crisismmd events, a manifest's `group` column; seeded, about --val-fraction of the train "
             "samples, and no val group is in train). --split actor is always `group`. Where the files already give "
             "val (crisismmd's dev, a manifest's val rows) `group` needs --val-fraction too, and then moves those rows "
             "to train and re-carves; ave has no groups. \\[default: random; group with --split actor]"),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", show_default=False, rich_help_panel=SPLIT,
        help="cremad/synthetic/manifest: share of the train samples moved to val (manifest: only when the CSV has no "
             "val rows, or with --val-by group); with --split actor, the share of actors in val; crisismmd: only "
             "with --val-by group. \\[default: 0.1; synthetic with --shift and --split actor: 0.15]"),
    test_fraction: Optional[float] = typer.Option(
        None, "--test-fraction", show_default=False, rich_help_panel=SPLIT,
        help="cremad/synthetic with --split actor: share of actors in test. \\[default: 0.1; synthetic with --shift: 0.25]"),
    seed: Optional[int] = typer.Option(None, "--seed", show_default=False, rich_help_panel=SPLIT,
                                       help="Seed of the val carve-out / actor split (synthetic: and of the clips; "
                                            "crisismmd: only with --val-by group). \\[default: 0]"),
    task: Optional[str] = typer.Option(
        None, "--task", click_type=click.Choice(["informative", "humanitarian", "damage"]), show_default=False,
        rich_help_panel=DATASET_OPTS,
        help="crisismmd: informative (2 classes) and humanitarian (8) are image+tweet, damage (3) image only. "
             "\\[default: informative]"),
    agreed_labels: bool = typer.Option(False, "--agreed-labels", rich_help_panel=DATASET_OPTS,
                                       help="crisismmd: use the _agreed_lab_ split files (text and image labels agree)."),
    label_column: Optional[str] = typer.Option(
        None, "--label-column", click_type=click.Choice(["label", "label_image", "label_text"]), show_default=False,
        rich_help_panel=DATASET_OPTS,
        help="crisismmd: which label column of the split files is the class (label_image: FedMultimodal's "
             "choice for humanitarian). \\[default: label]"),
    modality: Optional[List[str]] = typer.Option(
        None, "--modality", show_default=False, rich_help_panel=DATASET_OPTS,
        help="manifest: NAME=KIND or NAME=KIND@COLUMN, KIND one of audio, frames, image, array, text; repeat per "
             "modality. An array modality reads a numeric file per sample (.npy, .npz, or a .csv/.tsv sequence, one "
             "time step a row); NAME=array:KEY\\[@COLUMN] names the array inside its .npz files (without KEY an .npz "
             "must hold one array). \\[default: every non-reserved column, kind from the file extensions: "
             ".npy .npz .csv .tsv are arrays]"),
    clips: Optional[int] = typer.Option(None, "--clips", show_default=False, rich_help_panel=DATASET_OPTS,
                                        help="synthetic: number of clips, balanced over the 6 emotions. \\[default: 480]"),
    imbalance: Optional[float] = typer.Option(
        None, "--imbalance", show_default=False, rich_help_panel=DATASET_OPTS,
        help="synthetic: 0 = visual as informative as audio, 1 = visual carries no class information. \\[default: 0.6]"),
    shift: Optional[float] = typer.Option(
        None, "--shift", show_default=False, rich_help_panel=DATASET_OPTS,
        help="synthetic: strength of each actor's own nuisance (pitch offset and timbre of the voice, colour cast and "
             "look of the face), in units of the class signal. 0 = no actor effects; with --shift 1 --split actor a model "
             "fits the training actors and generalises worse to unseen ones, as on real data. \\[default: 0]"),
    actors: Optional[int] = typer.Option(
        None, "--actors", show_default=False, rich_help_panel=DATASET_OPTS,
        help="synthetic: draw the clips from this many CREMA-D actors (more clips per actor). "
             "\\[default: all 91; 24 with --shift > 0]"),
    audio_features: str = typer.Option("stft", "--audio-features", click_type=click.Choice(["stft", "logmel"]),
                                       rich_help_panel=FEATURES,
                                       help="log-magnitude STFT (literature) or log-mel spectrogram."),
    sample_rate: int = typer.Option(16000, "--sample-rate", rich_help_panel=FEATURES, help="Audio resampled to this rate (Hz)."),
    audio_duration: Optional[float] = typer.Option(
        None, "--audio-duration", show_default=False, rich_help_panel=FEATURES,
        help="Audio tiled or cut to this many seconds (AVE: of the event window). \\[default: 3; AVE 10]"),
    n_fft: int = typer.Option(512, "--n-fft", rich_help_panel=FEATURES, help="FFT size."),
    hop_length: int = typer.Option(353, "--hop-length", rich_help_panel=FEATURES, help="Hop between frames (samples)."),
    n_mels: int = typer.Option(128, "--n-mels", rich_help_panel=FEATURES, help="Mel bands (with --audio-features logmel)."),
    frames: int = typer.Option(3, "--frames", rich_help_panel=FEATURES,
                               help="Video frames per clip, evenly spaced over the clip (AVE: the event window)."),
    image_size: int = typer.Option(112, "--image-size", rich_help_panel=FEATURES,
                                   help="Frames and images are resized (shorter side) and centre-cropped to this square."),
    face_crop: bool = typer.Option(False, "--face-crop", rich_help_panel=FEATURES,
                                   help="Crop frames to the largest face (OpenCV Haar cascade; centre crop if none)."),
    image_model: Optional[Path] = typer.Option(
        None, "--image-model", show_default=False, rich_help_panel=FEATURES,
        help="Local transformers image model directory: store its embeddings instead of pixels. \\[default: pixels]"),
    text_model: Optional[Path] = typer.Option(
        None, "--text-model", show_default=False, rich_help_panel=FEATURES,
        help="Local transformers text encoder directory (model + tokenizer, saved with save_pretrained); required "
             "for text modalities. cmi never downloads models."),
    text_max_length: int = typer.Option(40, "--text-max-length", rich_help_panel=FEATURES, help="Tokens per text."),
    array_length: Optional[int] = typer.Option(
        None, "--array-length", show_default=False, rich_help_panel=FEATURES,
        help="Array sequences (2-D+ arrays and CSV/TSV files: first axis / rows = time steps) are cropped to their "
             "first N steps or padded with zero steps to N; a presence-mask channel marks the real steps (the model "
             "pools over those only). 1-D arrays are vectors and keep their shape. \\[default: none, every file of "
             "an array modality must have the shape of its first readable (train) file]"),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", rich_help_panel=RUN, help="Samples per Parquet shard."),
    workers: int = typer.Option(DEFAULT_WORKERS, "--workers", "-j", rich_help_panel=RUN,
                                help="Worker processes (1: no subprocess). \\[default: CPU cores, at most 4]", show_default=False),
    max_reject_fraction: float = typer.Option(
        DEFAULT_MAX_REJECT_FRACTION, "--max-reject-fraction", rich_help_panel=RUN,
        help="Fail (exit 2, no manifest) when more than this share of samples has a reject; re-run with a higher "
             "value to accept them (finished shards are reused)."),
    force: bool = typer.Option(False, "--force", rich_help_panel=RUN,
                               help="Delete the existing dataset NAME (finished or not) and prepare it again."),
    quiet: bool = typer.Option(False, "--quiet", "-q", rich_help_panel=RUN, help="No progress bar and no summary."),
) -> None:
    ws = workspace(ctx)
    progress = ProgressHook() if quiet else RichProgress()
    listing = build_listing(
        ws, dataset, root,
        {"split": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed, "task": task,
         "agreed": agreed_labels, "label_column": label_column, "modality": tuple(modality or ()), "clips": clips,
         "imbalance": imbalance, "shift": shift, "actors": actors, "val_by": val_by},
        workers=workers, progress=progress,
    )
    if modalities:
        listing = listing.select([m.strip() for m in modalities.split(",") if m.strip()])
    features = FeatureOptions(
        audio_features=audio_features, sample_rate=sample_rate, audio_duration=audio_duration, n_fft=n_fft,
        hop_length=hop_length, n_mels=n_mels, frames=frames, image_size=image_size, face_crop=face_crop,
        image_model=str(image_model) if image_model else None, text_model=str(text_model) if text_model else None,
        text_max_length=text_max_length, array_length=array_length,
    )
    run = RunOptions(shard_size=shard_size, workers=workers, force=force, max_reject_fraction=max_reject_fraction)
    names = [m.name for m in listing.modalities]
    try:
        result = prepare_listing(ws, listing, features, run, name=name, progress=progress)
    except TooManyRejects as exc:
        if not quiet:
            print_summary(exc.summary, names)
        raise
    if not quiet:
        report(result, names)


def report(result: PrepareResult, modalities: list[str]) -> None:
    artifact = result.artifact
    if result.reused:
        console.print(f"dataset [bold]{artifact.name}[/] is already prepared (same inputs and parameters); "
                      "nothing to do (--force prepares it again).")
    print_summary(result.summary, modalities)
    print_modalities(modality_specs(artifact))
    resumed = f", {result.shards_skipped} finished shards reused" if result.shards_skipped else ""
    console.print(
        f"[green]dataset[/] [bold]{artifact.name}[/] at {artifact.path} "
        f"({len(artifact.manifest['shards'])} shards{resumed}); classes: {', '.join(artifact.manifest['classes'])}"
    )
    console.print("next: [bold]cmi partition --alpha 0.5 --missing 0.3[/]")
