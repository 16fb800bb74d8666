"""Text: cleaning examples (incl. real CrisisMMD rows), pooling by hand, the local text encoder."""

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.extractors.pretrained import pool
from pipelines.extractors.text import TextEncoder, clean_text
from tests.extractors.tiny_models import HIDDEN, save_tiny_bert

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference-data" / "crisismmd"


@pytest.mark.parametrize(
    "raw, clean",
    [
        (
            "#Iran #earthquake damage put at over 5bn pounds https://t.co/xYYMI8eIWz #International",
            "#Iran #earthquake damage put at over 5bn pounds #International",
        ),
        ("Dominicaâ€™s Tourism Sector", "Dominica\u2019s Tourism Sector"),
        (
            "â€œItâ€™s shameful they didnâ€™t warn usâ€\x9d",  # \x9d: the byte cp1252 leaves undefined
            "\u201cIt\u2019s shameful they didn\u2019t warn us\u201d",
        ),
        ("MÃ©xico earthquake â€“ help", "México earthquake \u2013 help"),
        ("HurricaneÂ Maria, 25Â°C", "Hurricane Maria, 25°C"),
        ("Puerto Rico &amp; Florida &gt; 3 www.example.org/x  ok", "Puerto Rico & Florida > 3 ok"),
        ("  café   naïve\n\tresumé 🌀 ", "café naïve resumé 🌀"),  # genuine text is left alone
        ("RT @user: http://bit.ly/abc", "RT @user:"),
        ("Johansson &amp;amp; â€˜Avengersâ€™", "Johansson & \u2018Avengers\u2019"),  # escaped twice
    ],
)
def test_clean_text_examples(raw, clean):
    assert clean_text(raw) == clean


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference-data/crisismmd is absent")
def test_real_crisismmd_texts_come_out_clean():
    texts = []
    for path in sorted(REFERENCE.glob("task_*_text_img_*.tsv")):
        with path.open(encoding="utf-8", newline="") as handle:
            texts += [row[3] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    assert len(texts) > 5000
    raw_mojibake = sum("â€" in text for text in texts)
    assert raw_mojibake > 100  # the files really carry the quirk
    cleaned = [clean_text(text) for text in texts]
    for marker in ("â€", "Ã©", "Â ", "http", "&amp;", "  "):
        assert not any(marker in text for text in cleaned), marker


# ---------------------------------------------------------------- pooling by hand


def test_pool_prefers_the_pooler_output():
    output = SimpleNamespace(pooler_output=torch.tensor([[1.0, 2.0]]), last_hidden_state=torch.zeros(1, 3, 2))
    torch.testing.assert_close(pool(output), torch.tensor([[1.0, 2.0]]))


def test_pool_masked_mean_and_feature_map_mean():
    hidden = torch.tensor([[[1.0, 10.0], [3.0, 20.0], [100.0, 100.0]], [[2.0, 4.0], [4.0, 8.0], [6.0, 12.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    output = SimpleNamespace(pooler_output=None, last_hidden_state=hidden)
    torch.testing.assert_close(pool(output, mask), torch.tensor([[2.0, 15.0], [4.0, 8.0]]))
    feature_map = torch.arange(8.0).reshape(1, 2, 2, 2)  # (N, C, H, W)
    torch.testing.assert_close(pool(SimpleNamespace(last_hidden_state=feature_map)), torch.tensor([[1.5, 5.5]]))


# ---------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_encoder_shape_and_determinism(tiny_bert):
    texts = ["the flood", "fire damage to the house", "", "help people"]
    encoder = TextEncoder(tiny_bert, batch_size=3)
    assert encoder.dim == HIDDEN
    first = encoder.embed(texts)
    assert first.shape == (4, HIDDEN) and first.dtype == np.float32
    np.testing.assert_array_equal(first, TextEncoder(tiny_bert, batch_size=3).embed(texts))
    # padding inside a batch does not change a text's vector
    np.testing.assert_allclose(encoder.embed(["the flood"]), first[:1], atol=1e-5)
    assert np.abs(first[0] - first[1]).max() > 1e-3
    assert encoder.embed([]).shape == (0, HIDDEN)


def test_encoder_uses_the_pooler_and_truncates(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    encoder = TextEncoder(tiny_bert, max_length=8)
    tokens = AutoTokenizer.from_pretrained(tiny_bert)(["water house"], return_tensors="pt")
    with torch.inference_mode():
        expected = AutoModel.from_pretrained(tiny_bert)(**tokens).pooler_output.numpy()
    np.testing.assert_allclose(encoder.embed(["water house"]), expected, atol=1e-5)
    # 8 tokens = [CLS] + 6 words + [SEP]: words after the sixth do not matter
    six = "flood fire water house help people"
    np.testing.assert_allclose(encoder.embed([six + " the the"]), encoder.embed([six + " fire damage"]), atol=1e-6)
    assert np.abs(encoder.embed([six])[0] - encoder.embed(["flood fire water house help"])[0]).max() > 1e-4


def test_missing_model_dir_explains_the_option(tmp_path):
    with pytest.raises(CmiError, match="--text-model .*no such directory.*save_pretrained.*never downloads"):
        TextEncoder(tmp_path / "bert-base-uncased")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CmiError, match="--text-model .*not a saved transformers model"):
        TextEncoder(tmp_path / "weights")


def test_broken_model_dir_is_a_user_error(tmp_path, tiny_bert):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_bert / "config.json").read_text())
    with pytest.raises(CmiError, match="--text-model .*cannot load the model"):
        TextEncoder(broken)
