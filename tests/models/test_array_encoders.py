import pytest
import torch

from pipelines.errors import CmiError
from pipelines.models.encoders import EmbeddingEncoder, SequenceEncoder, build_encoder
from pipelines.models.net import ModelConfig, build_model, initialize
from pipelines.shards import ModalitySpec


def _init(module, seed=0):
    initialize(module, torch.Generator().manual_seed(seed))
    return module


def stored(values, length):
    """(T, C) real steps -> the (length, C + 1) payload prepare stores: zero steps after, mask last."""
    out = torch.zeros(length, values.shape[1] + 1)
    out[: values.shape[0], :-1] = values
    out[: values.shape[0], -1] = 1.0
    return out


def test_a_vector_spec_gets_the_mlp():
    enc = _init(build_encoder(ModalitySpec("v", "vector", (7,), "float32"), "resnet18", 6))
    assert isinstance(enc, EmbeddingEncoder)
    assert enc(torch.randn(4, 7)).shape == (4, 6)


@pytest.mark.parametrize("train", [False, True])
def test_sequence_padding_changes_nothing(train):
    enc = _init(build_encoder(ModalitySpec("s", "sequence", (12, 4), "float32"), "small", 8))
    assert isinstance(enc, SequenceEncoder)
    assert enc.strides == (1, 2, 2)
    enc.train(train)
    gen = torch.Generator().manual_seed(3)
    real = [torch.randn(t, 3, generator=gen) for t in (5, 12, 1)]
    exact = torch.stack([stored(real[0], 5)])                      # no padding at all
    padded = torch.stack([stored(v, 12) for v in real])           # as stored with --array-length 12
    longer = torch.stack([stored(v, 20) for v in real])           # 8 more padded steps
    with torch.no_grad():
        out = enc(padded)
        assert out.shape == (3, 8)
        torch.testing.assert_close(enc(longer), out, rtol=0, atol=1e-6)
        torch.testing.assert_close(enc(exact)[0], out[0], rtol=0, atol=1e-6)
        # whatever sits in a padded step's channels is ignored (mask 0)
        noisy = padded.clone()
        noisy[0, 5:, :-1] = 100.0
        torch.testing.assert_close(enc(noisy), out, rtol=0, atol=1e-6)
        # but the real steps matter
        changed = padded.clone()
        changed[0, 4, 0] += 1.0
        assert not torch.allclose(enc(changed)[0], out[0])
    # one sample in a training batch is fine (no BatchNorm)
    enc.train()
    assert enc(padded[:1]).shape == (1, 8)


def test_a_short_sequence_spec_keeps_two_positions():
    enc = build_encoder(ModalitySpec("s", "sequence", (3, 2), "float32"), "small", 4)
    assert enc.strides == (1, 2, 1)  # 3 steps -> 2 after the first stride; a further stride would leave 1
    x = torch.stack([stored(torch.ones(2, 1), 3)])
    assert _init(enc)(x).shape == (1, 4)


def test_array_specs_build_into_a_two_modality_model():
    specs = [ModalitySpec("ecg", "sequence", (16, 3), "float32"), ModalitySpec("labs", "vector", (5,), "float32")]
    net = build_model(specs, 3, ModelConfig(embed_dim=8))
    ecg = torch.stack([stored(torch.randn(t, 2), 16) for t in (16, 9, 4, 1)])
    out = net({"ecg": ecg, "labs": torch.randn(4, 5)},
              {"ecg": torch.tensor([1, 1, 0, 1]), "labs": torch.tensor([1, 0, 1, 1])})
    assert out.routed.shape == (4, 3) and torch.isfinite(out.routed).all()


@pytest.mark.parametrize("kind, shape", [("vector", (2, 3)), ("sequence", (8,)), ("sequence", (8, 1)),
                                         ("sequence", (2, 3, 4))])
def test_unusable_array_shapes_are_user_errors(kind, shape):
    with pytest.raises(CmiError, match="cmi prepare"):
        build_encoder(ModalitySpec("m", kind, shape, "float32"), "small", 8)
