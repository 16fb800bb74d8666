"""Prepare throughput: cmi's one-pass route against the literature's two-step route on
CREMA-D-shaped clips. Target: >= 25 clips/s with 2 workers, peak memory under 2 GB.

    python benchmarks/prepare_throughput.py [--clips N] [--listing full|unique] [--workers W]
                                            [--keep DIR] [--plot]

1. Writes N clips in CREMA-D's layout under real clip names (spread over the 7,442): a 2.5 s
   16 kHz 16-bit WAV in AudioWAV/ and a 2.5 s FLV (Sorenson video, 480x360, 30 fps, plus an mp3
   track like the real files) in VideoFlash/. ``--listing full`` (default) also hard-links them
   under every other CREMA-D name, so that the whole 7,442-clip dataset is there and cmi prepares
   all of it; ``unique`` (quicker) leaves the other names absent, and cmi records them as
   missing-file rejects (so its figure includes listing and rejecting those).
2. (a) cmi: ``cmi prepare cremad --root DIR --workers W`` as a subprocess (defaults: literature
   STFT, 3 frames at 112 px, zstd Parquet shards).
   (b) literature: step 1 decodes every frame of every video to JPEG files (cv2.VideoCapture +
   cv2.imwrite), step 2 runs librosa per clip (load, tile to 3 s, STFT 512/353, log) and saves a
   .npy; both steps on the N unique clips (its cost per clip does not depend on the dataset's
   size) with a W-process pool (same cores as cmi).
   Each route runs in its own wrapper process and is timed end to end (interpreter start and
   imports included). Memory: the peak of the summed RSS and PSS of the route's process tree,
   sampled from /proc every 0.1 s (PSS counts shared pages once), and the largest single process
   (getrusage RUSAGE_CHILDREN in the wrapper).
3. (c) one-process CPU cost of cmi's extractors per clip (audio load + STFT, frames).

Prints a table; ``--plot`` writes benchmarks/out/prepare_throughput.png, and the figures go to
benchmarks/out/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.datasets import cremad  # noqa: E402
from tests.extractors.media_files import write_video, write_wav  # noqa: E402

OUT = REPO / "benchmarks" / "out"
SECONDS, RATE, FPS, WIDTH, HEIGHT = 2.5, 16000, 30, 480, 360
FLV_AUDIO_RATE = 22050  # FLV's mp3 only takes 44.1/22.05/11.025 kHz
PAGE = os.sysconf("SC_PAGE_SIZE")
WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


# ----------------------------------------------------------------------------- clips


def all_clip_names() -> list[str]:
    """The 7,442 CREMA-D clip names, sorted."""
    return sorted(clip for rows in cremad.literature_split().values() for clip, _ in rows)


def clip_names(count: int) -> list[str]:
    """``count`` real CREMA-D clip names spread evenly over the sorted 7,442 (many actors)."""
    names = all_clip_names()
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def write_clip(task: tuple[Path, int, str]) -> None:
    """A talking-head-like clip: textured background, a drifting bright ellipse, sensor noise,
    and a harmonic voice-like tone with a syllable envelope."""
    root, index, name = task
    rng = np.random.default_rng([7, index])
    count, margin = int(SECONDS * FPS), 24
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    texture = 110 + 40 * np.sin(x / rng.uniform(20, 60)) * np.cos(y / rng.uniform(20, 60))
    background = np.clip(texture[..., None] * rng.uniform(0.7, 1.1, 3), 0, 255).astype(np.uint8)
    face = np.clip(rng.uniform(150, 200) * rng.uniform(0.7, 1.1, 3), 0, 255).astype(np.uint8)
    # an ellipse mask with a margin, sliced at the drifting offset of each frame
    big_y, big_x = np.mgrid[-margin : HEIGHT + margin, -margin : WIDTH + margin].astype(np.float32)
    ellipse = ((big_x - WIDTH / 2) / (0.22 * WIDTH)) ** 2 + ((big_y - HEIGHT / 2) / (0.35 * HEIGHT)) ** 2 <= 1
    drift = np.clip(np.cumsum(rng.normal(0, 1.5, (count, 2)), axis=0), -margin, margin).round().astype(int)
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for i, (dx, dy) in enumerate(drift):
        mask = ellipse[margin - dy : margin - dy + HEIGHT, margin - dx : margin - dx + WIDTH, None]
        noise = rng.integers(-12, 13, (HEIGHT, WIDTH, 1), dtype=np.int16)
        frames[i] = np.clip(np.where(mask, face, background) + noise, 0, 255)
    t = np.arange(int(SECONDS * RATE)) / RATE
    pitch = rng.uniform(100, 250)
    tone = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in range(1, 6))
    wave = (0.3 * tone * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2) + rng.normal(0, 0.01, t.size)).astype(np.float32)
    write_wav(root / cremad.AUDIO_DIR / f"{name}.wav", wave, RATE)
    flv_wave = np.interp(np.arange(int(SECONDS * FLV_AUDIO_RATE)) / FLV_AUDIO_RATE, t, wave).astype(np.float32)
    write_video(root / cremad.VIDEO_DIR / f"{name}.flv", frames, fps=FPS, wave=flv_wave, sample_rate=FLV_AUDIO_RATE)


def write_dataset(root: Path, names: list[str], workers: int, full: bool) -> int:
    """Write the clips; with ``full`` hard-link them under every other CREMA-D name too.
    Returns how many clips the root lists."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(write_clip, [(root, i, name) for i, name in enumerate(names)], chunksize=4)
    if not full:
        return len(names)
    others = sorted(set(all_clip_names()) - set(names))
    for i, name in enumerate(others):
        source = names[i % len(names)]
        for folder, ext in ((cremad.AUDIO_DIR, "wav"), (cremad.VIDEO_DIR, "flv")):
            os.link(root / folder / f"{source}.{ext}", root / folder / f"{name}.{ext}")
    return len(names) + len(others)


# ----------------------------------------------------------------------------- the literature route


def literature_frames(task: tuple[Path, Path, str]) -> int:
    """Step 1 for one clip: every frame of the video to a JPEG file."""
    import cv2

    root, out, name = task
    folder = out / "frames" / name
    folder.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(root / cremad.VIDEO_DIR / f"{name}.flv"))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"{count:05d}.jpg"), frame)
        count += 1
    capture.release()
    return count


def literature_audio(task: tuple[Path, Path, str]) -> None:
    """Step 2 for one clip: librosa load, tile to 3 s, STFT, log, saved as .npy."""
    import librosa

    root, out, name = task
    wave, rate = librosa.load(str(root / cremad.AUDIO_DIR / f"{name}.wav"), sr=RATE)
    wave = np.clip(np.tile(wave, 3)[: 3 * rate], -1.0, 1.0)
    spectrogram = np.log(np.abs(librosa.stft(wave, n_fft=512, hop_length=353)) + 1e-7)
    np.save(out / "audio" / f"{name}.npy", spectrogram)


def run_literature(root: Path, out: Path, names: list[str], workers: int) -> None:
    (out / "audio").mkdir(parents=True, exist_ok=True)
    tasks = [(root, out, name) for name in names]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(literature_frames, tasks, chunksize=4)
        pool.map(literature_audio, tasks, chunksize=4)


# ----------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    route: str
    clips: int
    wall_s: float
    clips_per_s: float
    peak_tree_rss_mb: float
    peak_tree_pss_mb: float
    max_process_rss_mb: float
    output_mb: float
    exit_code: int


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def tree_memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of ``pid`` and its descendants."""
    rss = pss = 0
    for member in descendants(pid):
        try:
            rss += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return rss, pss


def measure(route: str, command: list[str], clips: int, output: Path) -> Measurement:
    """Run ``command`` in a wrapper process, sampling its process tree's memory."""
    peaks = [0, 0]
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", WRAPPER, *command], stderr=subprocess.PIPE, text=True, cwd=REPO)

    def sample() -> None:
        while process.poll() is None:
            rss, pss = tree_memory(process.pid)
            peaks[0], peaks[1] = max(peaks[0], rss), max(peaks[1], pss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        print(stderr, file=sys.stderr)
    max_rss_kb = next((int(line.split()[1]) for line in stderr.splitlines() if line.startswith("MAXRSS_KB")), 0)
    size = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
    return Measurement(
        route, clips, wall, clips / wall, peaks[0] / 2**20, peaks[1] / 2**20, max_rss_kb / 1024, size / 2**20,
        process.returncode,
    )


def extractor_cpu_ms(root: Path, names: list[str]) -> dict[str, float]:
    """Mean CPU milliseconds per clip of cmi's extractors in this process (after a warm-up clip)."""
    from pipelines.extractors.audio import AudioParams, audio_features, fit_duration, load_audio
    from pipelines.extractors.visual import VisualParams, extract_frames

    audio, visual = AudioParams(), VisualParams()
    wav = [root / cremad.AUDIO_DIR / f"{name}.wav" for name in names]
    flv = [root / cremad.VIDEO_DIR / f"{name}.flv" for name in names]
    audio_features(fit_duration(load_audio(wav[0], RATE), RATE, audio.duration)[None], audio)
    extract_frames(flv[0], visual)
    start = time.process_time()
    waves = np.stack([fit_duration(load_audio(path, RATE), RATE, audio.duration) for path in wav])
    for first in range(0, len(waves), 64):
        audio_features(waves[first : first + 64], audio)
    audio_ms = (time.process_time() - start) * 1000 / len(names)
    start = time.process_time()
    for path in flv:
        extract_frames(path, visual)
    frames_ms = (time.process_time() - start) * 1000 / len(names)
    start = time.process_time()
    for path in flv:
        extract_frames(path, VisualParams(face_crop=True))
    face_ms = (time.process_time() - start) * 1000 / len(names)
    return {"audio_ms": audio_ms, "frames_ms": frames_ms, "frames_face_crop_ms": face_ms}


# ----------------------------------------------------------------------------- report


def print_table(results: list[Measurement], cpu: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prepare throughput, CREMA-D-shaped clips (2.5 s WAV + 2.5 s FLV 480x360 30 fps)")
    columns = ("route", "clips", "wall s", "clips/s", "peak tree PSS MB", "peak tree RSS MB", "largest process MB",
               "output MB")
    for column in columns:
        table.add_column(column, justify="left" if column == "route" else "right")
    for r in results:
        table.add_row(
            r.route, str(r.clips), f"{r.wall_s:.1f}", f"{r.clips_per_s:.1f}", f"{r.peak_tree_pss_mb:.0f}",
            f"{r.peak_tree_rss_mb:.0f}", f"{r.max_process_rss_mb:.0f}", f"{r.output_mb:.1f}",
        )
    console = Console(width=150)
    console.print(table)
    console.print(
        f"cmi extractors, one process, CPU per clip: audio (WAV load + tile + STFT) {cpu['audio_ms']:.1f} ms, "
        f"3 frames {cpu['frames_ms']:.1f} ms, 3 frames with --face-crop {cpu['frames_face_crop_ms']:.1f} ms"
    )


def plot(results: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.route for r in results]
    colours = ["tab:blue", "tab:orange", "tab:green"][: len(results)]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        ([r.clips_per_s for r in results], "clips per second (higher is better)"),
        ([r.peak_tree_pss_mb for r in results], "peak memory, PSS of all processes (MB)"),
        ([r.output_mb / r.clips for r in results], "output per clip (MB)"),
    )
    for axis, (values, title) in zip(axes, panels):
        bars = axis.bar(labels, values, color=colours)
        axis.bar_label(bars, fmt="%.3g")
        axis.margins(y=0.15)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8)
    figure.suptitle("CREMA-D-shaped clips, 2 worker processes on 2 cores", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200, help="unique clips to generate (default 200)")
    parser.add_argument(
        "--listing", choices=("full", "unique"), default="full",
        help="full (default): hard-link the clips under all 7,442 CREMA-D names, so cmi prepares the whole "
        "dataset; unique: only the N clips exist (the rest become missing-file rejects)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes for both routes (default 2)")
    parser.add_argument(
        "--keep", type=Path,
        help="work in this directory and keep it; a later run with the same --clips/--listing reuses its clips "
        "(default: a temp dir, removed)",
    )
    parser.add_argument("--plot", action="store_true", help="write benchmarks/out/prepare_throughput.png")
    parser.add_argument("--literature-route", nargs=2, type=Path, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.literature_route:
        run_literature(*args.literature_route, clip_names(args.clips), args.workers)
        return

    base = args.keep or Path(tempfile.mkdtemp(prefix="cmi-prepare-bench-"))
    root, workspace, literature_out = base / "CREMA-D", base / "workspace", base / "literature"
    names = clip_names(args.clips)
    try:
        listed = len(list((root / cremad.VIDEO_DIR).glob("*.flv"))) if (root / cremad.VIDEO_DIR).is_dir() else 0
        if listed != (len(all_clip_names()) if args.listing == "full" else len(names)) or not all(
            (root / cremad.VIDEO_DIR / f"{name}.flv").is_file() for name in names
        ):
            shutil.rmtree(root, ignore_errors=True)
            started = time.perf_counter()
            listed = write_dataset(root, names, args.workers, args.listing == "full")
            print(f"wrote {len(names)} clips ({listed} listed) in {time.perf_counter() - started:.0f} s under {root}")
        else:
            print(f"reusing the {listed} clips under {root}")
        for folder in (workspace, literature_out):
            shutil.rmtree(folder, ignore_errors=True)
        cmi_command = [
            sys.executable, "-m", "cmi_cli", "--workspace", str(workspace), "prepare", "cremad", "--root", str(root),
            "--workers", str(args.workers), "--quiet",
        ]
        if args.listing == "unique":
            cmi_command += ["--max-reject-fraction", "1"]  # the other 7,442 - N names are absent on purpose
        results = [
            measure("cmi prepare", cmi_command, listed, workspace),
            measure(
                "literature 2-step",
                [sys.executable, __file__, "--clips", str(args.clips), "--workers", str(args.workers),
                 "--literature-route", str(root), str(literature_out)],
                len(names),
                literature_out,
            ),
        ]
        cpu = extractor_cpu_ms(root, names)
        print_table(results, cpu)
        OUT.mkdir(parents=True, exist_ok=True)
        record = {"clips": args.clips, "listing": args.listing, "workers": args.workers, "cpu_count": os.cpu_count(),
                  "routes": [asdict(r) for r in results], "extractor_cpu_ms_per_clip": cpu}
        (OUT / "prepare_throughput.json").write_text(json.dumps(record, indent=2))
        if args.plot:
            plot(results, OUT / "prepare_throughput.png")
            print(f"figure: {OUT / 'prepare_throughput.png'}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
