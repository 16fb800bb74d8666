"""The synthetic dataset: a small CREMA-D lookalike with a known, tunable modality imbalance.

`cmi prepare synthetic` writes clips in CREMA-D's layout (``AudioWAV/<clip>.wav``,
``VideoFlash/<clip>.flv``) under real clip names drawn from the shipped literature split, so
the CREMA-D loader and split apply unchanged, then prepares them like ``cremad``. It is the
demo's dataset and the tests' fixture.

Each of the 6 emotions has

* an **audio signature**: a harmonic tone (5 harmonics, vibrato, syllable-like envelope, light
  noise) whose pitch is the emotion's step on a ladder of ratio 1.12 (115-203 Hz), with a
  per-clip log-normal pitch jitter (sigma 0.045). A pitch reader is right about 83% of the time
  (neighbouring emotions overlap);
* a **visual signature**: a face-like ellipse tinted towards the emotion's hue (6 hues 60 degrees
  apart in the chroma plane, radius ``55 * (1 - imbalance)`` in RGB units), blurred by a per-clip
  random tint (sigma 20) and per-frame pixel noise. The best possible colour reader is right
  about 83% of the time at ``imbalance=0`` (as informative as the audio), 45% at the default 0.6,
  and at chance (1/6) at 1.

So ``imbalance`` sets the gap between the modalities: the visual modality carries real but weak
class information that a balanced method (FedCMI) can exploit. The figures above are the Bayes
accuracies of the generating process (pipelines/datasets/synthetic.py: ``bayes_accuracy``).

**Actor shift** (``shift`` S > 0). On real data a weak modality is usually weak because it
generalises badly to unseen speakers, not because it carries little signal. With S > 0 every
actor gets its own nuisance, drawn once per actor from the seed:

* voice: a pitch offset (log-normal, sigma ``S * AUDIO_SHIFT_STEPS`` ladder steps) that shifts
  every clip of the actor along the emotion ladder, and a timbre (harmonic roll-off, an
  identity cue that carries no class information);
* face: a colour cast (normal, sigma ``S * FULL_TINT`` per RGB channel, so S = 1 is as large as
  the whole class tint) plus a look of its own (background colour, face shape), the cue that
  lets a model recognise the actor.

A model can learn each training actor's offset and cast (the actor is recognisable) and so fits
the training actors, but on an unseen actor the offset and cast are noise: with ``split="actor"``
the test accuracy of a modality falls towards its ``unseen`` Bayes accuracy while its training
accuracy stays near the ``seen`` one (``bayes_accuracy`` gives both). The clips are then drawn
from ``actors`` actors (default 24 when S > 0: about 30 clips each at 720 clips, enough for a
model to learn an actor). S = 0 writes exactly the clips of earlier versions.

Clips last 2-3 s (16 kHz 16-bit mono WAV; 160x120 FLV1 video at 10 fps, no audio track).
Clips are balanced over emotions; about 20% of each emotion's clips are drawn from the
literature test list, the rest from its train list. Everything derives from ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import soundfile

from pipelines.artifacts import atomic_path, atomic_write_json
from pipelines.datasets import cremad
from pipelines.errors import CmiError

MARKER = "synthetic.json"
SAMPLE_RATE = 16000
FPS = 10
WIDTH, HEIGHT = 160, 120
TEST_SHARE = 0.2
PITCH_BASE_HZ = 115.0
PITCH_RATIO = 1.12
PITCH_JITTER = 0.045
#: pitch rank of each emotion on the ladder (lowest first)
PITCH_RANK = {"SAD": 0, "NEU": 1, "DIS": 2, "ANG": 3, "HAP": 4, "FEA": 5}
FULL_TINT = 55.0
TINT_NOISE = 20.0
PIXEL_NOISE = 20  # uniform integer noise in [-20, 20] (sigma 11.8)
MIN_CLIPS = 12
ALL_ACTORS = 91
#: sigma of an actor's pitch offset at shift 1, in steps of the emotion ladder
AUDIO_SHIFT_STEPS = 0.35
#: actors the clips are drawn from when shift > 0 and ``actors`` is not given
SHIFT_ACTORS = 24
#: default shares of actors in test and val for ``split="actor"`` when the clips come from few
#: actors (CREMA-D's 10% would be 2 of 24 actors: too few to measure generalisation)
ACTOR_SPLIT_FRACTIONS = {"test_fraction": 0.25, "val_fraction": 0.15}


@dataclass(frozen=True)
class SyntheticParams:
    """``actors``: how many CREMA-D actors the clips come from (None: every actor when
    ``shift`` is 0, ``SHIFT_ACTORS`` otherwise)."""

    clips: int = 480
    imbalance: float = 0.6
    seed: int = 0
    shift: float = 0.0
    actors: int | None = None

    def __post_init__(self) -> None:
        if self.clips < MIN_CLIPS:
            raise CmiError(f"--clips must be at least {MIN_CLIPS} (two per emotion), got {self.clips}.")
        if not 0.0 <= self.imbalance <= 1.0:
            raise CmiError(f"--imbalance must be in [0, 1] (0: both modalities equally informative), got {self.imbalance}.")
        if not self.shift >= 0.0:
            raise CmiError(f"--shift must be >= 0 (0: no actor effects), got {self.shift}.")
        if self.actors is not None and not 2 <= self.actors <= ALL_ACTORS:
            raise CmiError(f"--actors must be between 2 and {ALL_ACTORS} (CREMA-D's actors), got {self.actors}.")

    @property
    def actor_count(self) -> int | None:
        """The number of actors the clips are drawn from (None: all, the original plan)."""
        if self.actors is not None:
            return self.actors
        return SHIFT_ACTORS if self.shift > 0 else None


@dataclass(frozen=True)
class ClipPlan:
    """One clip to write: its CREMA-D name, emotion and position in the dataset (seeds its RNG)."""

    name: str
    emotion: str
    index: int


def plan_clips(params: SyntheticParams) -> list[ClipPlan]:
    """Choose ``params.clips`` real clip names, balanced over emotions, deterministically: about
    ``TEST_SHARE`` of each emotion's clips from the literature test list, the rest from its train
    list, among the clips of ``params.actor_count`` seeded actors (all actors when None)."""
    rng = np.random.default_rng([params.seed, 0])
    classes = cremad.literature_classes()
    split = cremad.literature_split()
    if params.actor_count is not None:
        actors = sorted({cremad.parse_clip(clip)["actor"] for clip, _ in split["train"]})
        keep = {actors[i] for i in np.random.default_rng([params.seed, 3]).choice(len(actors), params.actor_count,
                                                                                   replace=False)}
        split = {part: [(c, e) for c, e in rows if cremad.parse_clip(c)["actor"] in keep] for part, rows in split.items()}
    per_class = np.full(len(classes), params.clips // len(classes))
    per_class[: params.clips % len(classes)] += 1
    chosen: list[tuple[str, str]] = []
    for emotion, n in zip(classes, per_class):
        names = {part: sorted(clip for clip, emo in split[part] if emo == emotion) for part in ("train", "test")}
        if n > len(names["train"]) + len(names["test"]):
            raise CmiError(f"--clips {params.clips} needs {n} {emotion} clips, but the {params.actor_count} actors have "
                           f"{len(names['train']) + len(names['test'])}: lower --clips or raise --actors.")
        n_test = min(int(round(TEST_SHARE * n)), len(names["test"]))
        n_test = max(n_test, n - len(names["train"]))
        for part, take in (("train", n - n_test), ("test", n_test)):
            pool = names[part]
            chosen += [(pool[i], emotion) for i in sorted(rng.choice(len(pool), size=take, replace=False))]
    chosen.sort()
    return [ClipPlan(name, emotion, i) for i, (name, emotion) in enumerate(chosen)]


@dataclass(frozen=True)
class ActorStyle:
    """One actor's nuisance (all zero / None when shift is 0): ``pitch`` log-pitch offset,
    ``rolloff`` harmonic amplitude exponent, ``cast`` RGB colour cast, ``background`` RGB
    background colour, ``face_scale`` (width, height) of the face ellipse relative to the frame."""

    pitch: float = 0.0
    rolloff: float = 1.0
    cast: np.ndarray | None = None
    background: np.ndarray | None = None
    face_scale: tuple[float, float] = (0.28, 0.4)


def actor_style(params: SyntheticParams, actor: str) -> ActorStyle:
    """The actor's style, the same in every clip of the actor (seeded by the dataset seed and the
    actor id); the neutral style when ``shift`` is 0."""
    if params.shift <= 0:
        return ActorStyle()
    rng = np.random.default_rng([params.seed, 2, int(actor)])
    return ActorStyle(
        pitch=float(rng.normal(0.0, params.shift * AUDIO_SHIFT_STEPS * np.log(PITCH_RATIO))),
        rolloff=float(rng.uniform(0.5, 1.5)),
        cast=rng.normal(0.0, params.shift * FULL_TINT, 3),
        background=rng.uniform(40, 200, 3),
        face_scale=(float(rng.uniform(0.2, 0.34)), float(rng.uniform(0.32, 0.46))),
    )


def hue_directions() -> dict[str, np.ndarray]:
    """Unit RGB tint per emotion: 6 hues 60 degrees apart in the plane orthogonal to grey."""
    u = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
    v = np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)
    classes = cremad.literature_classes()
    return {emo: np.cos(np.pi / 3 * k) * u + np.sin(np.pi / 3 * k) * v for k, emo in enumerate(classes)}


def clip_rng(params: SyntheticParams, clip: ClipPlan) -> np.random.Generator:
    return np.random.default_rng([params.seed, 1, clip.index])


def synth_audio(params: SyntheticParams, clip: ClipPlan, rng: np.random.Generator, duration: float,
                style: ActorStyle = ActorStyle()) -> np.ndarray:
    """The clip's wave, float32 in [-1, 1]."""
    t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = PITCH_BASE_HZ * PITCH_RATIO ** PITCH_RANK[clip.emotion] * np.exp(rng.normal(0.0, PITCH_JITTER) + style.pitch)
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / SAMPLE_RATE
    harmonics = np.arange(1, 6)[:, None]
    tone = (np.sin(harmonics * phase[None, :] + rng.uniform(0, 2 * np.pi, (5, 1))) / harmonics ** style.rolloff).sum(axis=0)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 2 * np.pi))
    wave = tone * envelope + rng.normal(0.0, 0.1, t.size)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def synth_frames(params: SyntheticParams, clip: ClipPlan, rng: np.random.Generator, duration: float,
                 style: ActorStyle = ActorStyle()) -> np.ndarray:
    """The clip's frames, uint8 (T, H, W, 3): background, tinted ellipse, per-frame noise."""
    n_frames = max(1, int(round(duration * FPS)))
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    background = rng.uniform(40, 200, 3) + (x / WIDTH - 0.5)[..., None] * rng.uniform(-40, 40, 3)
    tint = (1.0 - params.imbalance) * FULL_TINT * hue_directions()[clip.emotion] + rng.normal(0.0, TINT_NOISE, 3)
    if style.cast is not None:
        # the actor's own background (a little per-clip variation) and colour cast
        background = background - background.mean(axis=(0, 1)) + style.background + rng.normal(0.0, 6.0, 3)
        tint = tint + style.cast
    face = rng.uniform(110, 170) + tint
    # the ellipse drifts a little from frame to frame
    drift = np.cumsum(rng.normal(0.0, 1.0, (n_frames, 2)), axis=0).astype(np.float32)
    dx = (x[None] - WIDTH / 2 - drift[:, 0, None, None]) / (style.face_scale[0] * WIDTH)
    dy = (y[None] - HEIGHT / 2 - drift[:, 1, None, None]) / (style.face_scale[1] * HEIGHT)
    inside = dx * dx + dy * dy <= 1.0
    base = np.rint(background).astype(np.int16)
    frames = base + inside[..., None] * (np.rint(face).astype(np.int16) - base)
    frames += rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, frames.shape, dtype=np.int16)
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_clip(root: Path, params: SyntheticParams, clip: ClipPlan) -> None:
    """Write the clip's WAV and FLV atomically (the same bytes for the same params)."""
    rng = clip_rng(params, clip)
    style = actor_style(params, cremad.parse_clip(clip.name)["actor"])
    duration = float(rng.uniform(2.0, 3.0))
    wave = synth_audio(params, clip, rng, duration, style)
    frames = synth_frames(params, clip, rng, duration, style)
    with atomic_path(root / cremad.AUDIO_DIR / f"{clip.name}.wav") as tmp:
        soundfile.write(str(tmp), wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    with atomic_path(root / cremad.VIDEO_DIR / f"{clip.name}.flv") as tmp:
        write_flv(tmp, frames)


def write_flv(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w", format="flv") as container:
        stream = container.add_stream("flv", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        # FFmpeg stamps its version into the file's metadata; drop it for reproducible bytes
        container.metadata["encoder"] = ""
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def clip_done(root: Path, clip: ClipPlan) -> bool:
    return all((root / d / f"{clip.name}.{ext}").is_file() for d, ext in ((cremad.AUDIO_DIR, "wav"), (cremad.VIDEO_DIR, "flv")))


def claim_root(root: Path, params: SyntheticParams, clips: list[ClipPlan]) -> list[ClipPlan]:
    """Prepare ``root`` for generation and return the clips still to write.

    ``root`` must be empty, or hold an earlier synthetic dataset (its ``synthetic.json``).
    Same params: clips already written are kept (generation resumes); other params: the
    earlier clips are removed first. Anything else in ``root`` is refused, never overwritten.
    """
    marker = root / MARKER
    wanted = {"params": asdict(params), "clips": [c.name for c in clips]}
    if marker.is_file():
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous != wanted:
            for sub in (cremad.AUDIO_DIR, cremad.VIDEO_DIR):
                for file in (root / sub).glob("*"):
                    file.unlink()
    elif root.exists() and any(root.iterdir()):
        raise CmiError(
            f"{root} is not empty and holds no {MARKER}: cmi only writes the synthetic dataset into an empty "
            "folder or one it made. Pass another --root (or none: the default is <workspace>/raw/synthetic-cremad)."
        )
    for sub in (cremad.AUDIO_DIR, cremad.VIDEO_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, wanted)
    return [c for c in clips if not clip_done(root, c)]


def bayes_accuracy(params: SyntheticParams, n: int = 200_000, seed: int = 0, unseen: bool = False) -> dict[str, float]:
    """Accuracy of the best classifier of each modality's latent signature (pitch / mean face tint),
    estimated by simulating the generating process: the ceiling a model can reach per modality.

    ``unseen=False``: for an actor whose pitch offset and colour cast are known (a training actor
    the model has learnt); ``unseen=True``: for a new actor, whose offset and cast are unknown
    noise (nearest-centre rule: the classes' centres are equally spread, so it stays the best
    guess). Both are the same when ``shift`` is 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    ladder = np.log(PITCH_RATIO) * np.arange(6)
    rank = np.array([PITCH_RANK[e] for e in cremad.literature_classes()])
    pitch_noise = np.hypot(PITCH_JITTER, params.shift * AUDIO_SHIFT_STEPS * np.log(PITCH_RATIO)) if unseen else PITCH_JITTER
    pitch = ladder[rank[labels]] + rng.normal(0.0, pitch_noise, n)
    audio_label = np.argsort(rank)[np.abs(pitch[:, None] - ladder[None, :]).argmin(axis=1)]
    centres = (1.0 - params.imbalance) * FULL_TINT * np.stack(list(hue_directions().values()))
    tint_noise = np.hypot(TINT_NOISE, params.shift * FULL_TINT) if unseen else TINT_NOISE
    tint = centres[labels] + rng.normal(0.0, tint_noise, (n, 3))
    visual = ((tint[:, None, :] - centres[None]) ** 2).sum(axis=-1).argmin(axis=1)
    if params.imbalance == 1.0:
        visual = rng.integers(0, 6, n)  # all centres coincide: any guess is as good
    return {"audio": float((audio_label == labels).mean()), "visual": float((visual == labels).mean())}
