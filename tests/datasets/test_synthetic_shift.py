"""The synthetic dataset's actor shift (`cmi prepare synthetic --shift S`)."""

from collections import Counter

import av
import numpy as np
import pytest
import soundfile

from pipelines.datasets import cremad, synthetic
from pipelines.datasets.synthetic import ActorStyle, SyntheticParams
from pipelines.errors import CmiError


def actor(clip):
    return cremad.parse_clip(clip.name)["actor"]


def test_shift_draws_the_clips_from_fewer_actors_balanced_over_emotions():
    params = SyntheticParams(clips=720, shift=1.0, seed=3)
    clips = synthetic.plan_clips(params)
    assert len(clips) == 720 and len({c.name for c in clips}) == 720
    assert len({actor(c) for c in clips}) == synthetic.SHIFT_ACTORS
    assert set(Counter(c.emotion for c in clips).values()) == {120}
    assert len({actor(c) for c in synthetic.plan_clips(SyntheticParams(clips=60, actors=5))}) == 5
    # shift 0 keeps the original plan over all actors
    assert synthetic.plan_clips(SyntheticParams(clips=62, seed=5, shift=0.0)) == synthetic.plan_clips(
        SyntheticParams(clips=62, seed=5))
    with pytest.raises(CmiError, match="raise --actors"):
        synthetic.plan_clips(SyntheticParams(clips=3000, actors=2))
    with pytest.raises(CmiError, match="--shift"):
        SyntheticParams(shift=-1.0)
    with pytest.raises(CmiError, match="--actors"):
        SyntheticParams(actors=200)


def test_an_actor_has_one_style_and_actors_differ():
    params = SyntheticParams(shift=1.0, seed=0)
    a, again, b = synthetic.actor_style(params, "1001"), synthetic.actor_style(params, "1001"), synthetic.actor_style(params, "1002")
    assert a.pitch == again.pitch and np.array_equal(a.cast, again.cast)
    assert a.pitch != b.pitch and not np.allclose(a.cast, b.cast)
    assert synthetic.actor_style(SyntheticParams(shift=0.0), "1001") == ActorStyle()
    # the spread scales with the shift: sigma of the cast is shift * FULL_TINT per channel
    casts = np.stack([synthetic.actor_style(SyntheticParams(shift=0.5), str(1001 + i)).cast for i in range(91)])
    assert casts.std() == pytest.approx(0.5 * synthetic.FULL_TINT, rel=0.15)
    pitches = np.array([synthetic.actor_style(SyntheticParams(shift=1.0), str(1001 + i)).pitch for i in range(91)])
    assert pitches.std() == pytest.approx(synthetic.AUDIO_SHIFT_STEPS * np.log(synthetic.PITCH_RATIO), rel=0.2)


def test_unseen_actors_are_harder_than_seen_ones():
    """Bayes accuracy: a known actor's offsets can be removed, an unseen actor's are noise."""
    flat = SyntheticParams(imbalance=0.2, shift=0.0)
    assert synthetic.bayes_accuracy(flat) == synthetic.bayes_accuracy(flat, unseen=True)
    shifted = SyntheticParams(imbalance=0.2, shift=1.0)
    seen, unseen = synthetic.bayes_accuracy(shifted), synthetic.bayes_accuracy(shifted, unseen=True)
    assert seen == synthetic.bayes_accuracy(flat)
    assert seen["visual"] == pytest.approx(0.73, abs=0.01) and unseen["visual"] == pytest.approx(0.35, abs=0.01)
    assert seen["audio"] == pytest.approx(0.83, abs=0.01) and unseen["audio"] == pytest.approx(0.71, abs=0.01)


def test_files_carry_the_actor_style(tmp_path):
    """Every clip of an actor has that actor's pitch offset and colour cast in its files."""
    params = SyntheticParams(clips=24, imbalance=1.0, shift=0.5, actors=3, seed=0)
    for clip in synthetic.claim_root(tmp_path, params, synthetic.plan_clips(params)):
        synthetic.write_clip(tmp_path, params, clip)
    ladder = synthetic.PITCH_BASE_HZ * synthetic.PITCH_RATIO ** np.arange(6)
    offsets, faces = {}, {}
    for clip in synthetic.plan_clips(params):
        wave, rate = soundfile.read(tmp_path / "AudioWAV" / f"{clip.name}.wav")
        spectrum = np.abs(np.fft.rfft(wave))
        f0 = np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum[: wave.size // 40])]  # below 400 Hz
        offsets.setdefault(actor(clip), []).append(np.log(f0 / ladder[synthetic.PITCH_RANK[clip.emotion]]))
        with av.open(str(tmp_path / "VideoFlash" / f"{clip.name}.flv")) as video:
            frame = next(video.decode(video=0)).to_ndarray(format="rgb24").astype(float)
        faces.setdefault(actor(clip), []).append(frame[55:65, 75:85].reshape(-1, 3).mean(axis=0))
    for name, values in offsets.items():
        style = synthetic.actor_style(params, name)
        # f0 = ladder * exp(jitter + style.pitch): the median offset is the actor's, within the jitter
        assert np.median(values) == pytest.approx(style.pitch, abs=2.5 * synthetic.PITCH_JITTER)
        # imbalance 1: no class tint, so the face's chroma is the actor's cast (+ noise, sigma 20)
        chroma = np.mean(faces[name], axis=0) - np.mean(faces[name])
        assert np.abs(chroma - (style.cast - style.cast.mean())).max() < 20
