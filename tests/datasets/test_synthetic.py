import hashlib
from collections import Counter

import av
import numpy as np
import pytest
import soundfile

from pipelines.datasets import cremad, synthetic
from pipelines.datasets.synthetic import SyntheticParams
from pipelines.errors import CmiError


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def generate(root, params):
    for clip in synthetic.claim_root(root, params, synthetic.plan_clips(params)):
        synthetic.write_clip(root, params, clip)


def test_plan_is_balanced_real_and_follows_the_literature_split():
    clips = synthetic.plan_clips(SyntheticParams(clips=62, seed=5))
    assert len(clips) == 62 and len({c.name for c in clips}) == 62
    assert sorted(Counter(c.emotion for c in clips).values()) == [10, 10, 10, 10, 11, 11]
    split = {clip: (s, emo) for s, rows in cremad.literature_split().items() for clip, emo in rows}
    assert all(split[c.name][1] == c.emotion for c in clips)
    # round(0.2 * 10) = 2 and round(0.2 * 11) = 2 test clips per emotion
    assert Counter(split[c.name][0] for c in clips) == {"test": 12, "train": 50}
    assert synthetic.plan_clips(SyntheticParams(clips=62, seed=5)) == clips
    assert synthetic.plan_clips(SyntheticParams(clips=62, seed=6)) != clips


def test_generation_is_byte_reproducible_and_resumable(tmp_path):
    params = SyntheticParams(clips=12, seed=1)
    generate(tmp_path / "a", params)
    generate(tmp_path / "b", params)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert len(list((tmp_path / "a" / "AudioWAV").glob("*.wav"))) == 12
    # resume: a clip deleted after an interruption is the only one written again
    victim = next((tmp_path / "a" / "VideoFlash").glob("*.flv"))
    victim.unlink()
    todo = synthetic.claim_root(tmp_path / "a", params, synthetic.plan_clips(params))
    assert [c.name for c in todo] == [victim.stem]
    # other params: the old clips are removed first
    other = SyntheticParams(clips=12, seed=2)
    assert len(synthetic.claim_root(tmp_path / "b", other, synthetic.plan_clips(other))) == 12
    assert not any((tmp_path / "b" / "AudioWAV").iterdir())


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "AudioWAV" / "precious.wav").write_bytes(b"x")
    with pytest.raises(CmiError, match="not empty and holds no synthetic.json"):
        synthetic.claim_root(tmp_path, SyntheticParams(clips=12), synthetic.plan_clips(SyntheticParams(clips=12)))
    with pytest.raises(CmiError, match="--imbalance"):
        SyntheticParams(imbalance=1.5)
    with pytest.raises(CmiError, match="--clips"):
        SyntheticParams(clips=5)


def test_files_carry_the_class_signatures(tmp_path):
    """The WAV's pitch sits on its emotion's ladder step; the decoded face tint points to its hue."""
    params = SyntheticParams(clips=24, imbalance=0.0, seed=0)
    generate(tmp_path, params)
    hues = synthetic.hue_directions()
    ladder = synthetic.PITCH_BASE_HZ * synthetic.PITCH_RATIO ** np.arange(6)
    pitch_hits = tint_hits = 0
    for clip in synthetic.plan_clips(params):
        wave, rate = soundfile.read(tmp_path / "AudioWAV" / f"{clip.name}.wav")
        assert rate == 16000 and 2.0 <= wave.size / rate <= 3.0
        spectrum = np.abs(np.fft.rfft(wave))
        f0 = np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)]
        pitch_hits += np.abs(np.log(ladder / f0)).argmin() == synthetic.PITCH_RANK[clip.emotion]
        with av.open(str(tmp_path / "VideoFlash" / f"{clip.name}.flv")) as video:
            frame = next(video.decode(video=0)).to_ndarray(format="rgb24").astype(float)
        assert frame.shape == (120, 160, 3)
        face = frame[50:70, 70:90].reshape(-1, 3).mean(axis=0)
        chroma = face - face.mean()
        tint_hits += max(hues, key=lambda e: chroma @ hues[e]) == clip.emotion
    # at imbalance 0 both signatures are ~83% readable (Bayes); allow sampling noise on 24 clips
    assert pitch_hits >= 15 and tint_hits >= 15


def test_imbalance_sets_the_gap():
    full, default, none = (synthetic.bayes_accuracy(SyntheticParams(imbalance=x)) for x in (0.0, 0.6, 1.0))
    assert full["audio"] == pytest.approx(0.83, abs=0.01) and full["visual"] == pytest.approx(0.83, abs=0.01)
    assert default["visual"] == pytest.approx(0.45, abs=0.01) and default["audio"] == full["audio"]
    assert none["visual"] == pytest.approx(1 / 6, abs=0.01)
