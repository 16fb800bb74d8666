import math

import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import OGMGE, FedAvg, OGMGEHparams, RoundContext, TrainConfig
from pipelines.fl.ogm_ge import modulation_coefficients
from pipelines.models import ModelConfig, build_model
from tests.fl.common import (CPU, NUM_CLASSES, SPECS, assert_states_equal, client, initial_state, make_pool,
                             method, only)

LABELS = torch.tensor([0, 1])
STRONG = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])   # p[y] = .75, .5: s = 1.25
WEAK = torch.zeros(2, 2)                                   # p[y] = .5, .5: s = 1.0


def test_modulation_coefficients_by_hand():
    k_a, k_b = modulation_coefficients(STRONG, WEAK, LABELS, 0.8)
    # ρ = 1.25 / 1.0: k_dom = 1 − tanh(0.8 · 1.25) = 1 − tanh(1) = 0.238406
    assert float(k_a) == pytest.approx(1 - math.tanh(1.0), abs=1e-6)
    assert float(k_a) == pytest.approx(0.238406, abs=1e-6)
    assert float(k_b) == 1.0
    k_a, k_b = modulation_coefficients(WEAK, STRONG, LABELS, 0.8)     # mirror: the second dominates
    assert float(k_a) == 1.0
    assert float(k_b) == pytest.approx(1 - math.tanh(1.0), abs=1e-6)
    k_a, k_b = modulation_coefficients(STRONG, STRONG.clone(), LABELS, 0.8)   # tie
    assert (float(k_a), float(k_b)) == (1.0, 1.0)


def _backward(ogm, pool, rows=range(8)):
    """One forward/backward of the shared objective on ``rows``; the outputs, batch and the grads."""
    model = ogm.model
    model.load_state_dict(initial_state(ogm))
    model.train()
    batch = next(pool.batches(list(rows), len(rows), None, shuffle=False))
    model.zero_grad(set_to_none=True)
    outputs = model(batch.inputs, batch.present)
    ogm.local_loss(model, outputs, batch, RoundContext(client=client(list(rows)), round_idx=0)).backward()
    return outputs, batch, _grads(model)


def _grads(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _modulate(ogm, outputs, batch, grads, seed):
    """Restore ``grads`` into the model, run after_backward with a generator seeded ``seed``."""
    for n, p in ogm.model.named_parameters():
        p.grad = None if grads[n] is None else grads[n].clone()
    ogm.after_backward(ogm.model, outputs, batch, None, 0, torch.Generator().manual_seed(seed))
    return _grads(ogm.model)


def _hand_coefficients(ogm, outputs, batch):
    """k_A, k_B from the concat head's per-slot logits W_m u_m + b/2 on the multimodal rows."""
    both = outputs.valid["fused"]
    w, b = ogm.model.fusion.out.weight.detach(), ogm.model.fusion.out.bias.detach()
    d = w.shape[1] // 2
    u_a, u_v = (outputs.features[m].detach()[both] for m in ("audio", "visual"))
    y = batch.labels[both]
    s_a = (u_a @ w[:, :d].T + b / 2).softmax(1)[torch.arange(len(y)), y].sum().item()
    s_v = (u_v @ w[:, d:].T + b / 2).softmax(1)[torch.arange(len(y)), y].sum().item()
    alpha = ogm.hparams.alpha
    return (1 - math.tanh(alpha * s_a / s_v) if s_a > s_v else 1.0,
            1 - math.tanh(alpha * s_v / s_a) if s_v > s_a else 1.0)


def test_after_backward_modulates_encoder_gradients_with_k_and_seeded_noise():
    ogm = method(OGMGE, OGMGEHparams(alpha=0.8))
    pool = make_pool(16, missing=0.3)          # rows 0-7: 5 multimodal, 2 audio-less, 1 visual-less
    outputs, batch, before = _backward(ogm, pool)
    assert 0 < int(outputs.valid["fused"].sum()) < 8
    after = _modulate(ogm, outputs, batch, before, seed=123)
    k = dict(zip(("audio", "visual"), _hand_coefficients(ogm, outputs, batch)))
    assert min(k.values()) < 1 and max(k.values()) == 1.0        # one modality dominates
    # expected: k·g + N(0,1)·std(g), the noise drawn in modality order, then parameter order
    noise = torch.Generator().manual_seed(123)
    modulated = 0
    for m in ("audio", "visual"):
        for n, _ in ogm.model.named_parameters():
            if ogm.param_groups[n] != f"{m}.encoder" or before[n] is None:
                continue
            g = before[n]
            expected = k[m] * g + torch.randn(g.shape, generator=noise) * g.std()
            assert torch.allclose(after[n], expected, rtol=1e-5, atol=1e-7), n
            modulated += 1
    assert modulated > 0
    for n, g in before.items():
        if not ogm.param_groups[n].endswith(".encoder"):     # classifiers and fusion: bit-identical
            assert (g is None and after[n] is None) or torch.equal(after[n], g), n
    assert after["fusion.out.weight"] is not None and after["branches.audio.classifier.weight"] is not None


def test_noise_follows_the_generator_seed():
    ogm = method(OGMGE)
    outputs, batch, before = _backward(ogm, make_pool(16, missing=0.3))
    first, again, other = (_modulate(ogm, outputs, batch, before, seed) for seed in (7, 7, 8))
    encoder = [n for n in before if before[n] is not None and ogm.param_groups[n].endswith(".encoder")]
    assert all(torch.equal(first[n], again[n]) for n in encoder)
    assert all(not torch.equal(first[n], other[n]) for n in encoder)


def test_batch_without_multimodal_samples_is_not_modulated():
    ogm = method(OGMGE)
    outputs, batch, before = _backward(ogm, only(make_pool(16), "audio"))
    assert not bool(outputs.valid["fused"].any())
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    ogm.after_backward(ogm.model, outputs, batch, None, 0, generator)
    after = _grads(ogm.model)
    assert all((before[n] is None and after[n] is None) or torch.equal(before[n], after[n]) for n in before)
    assert torch.equal(generator.get_state(), state)          # no noise drawn


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_fusion_without_slices_is_a_user_error(fusion):
    build = lambda: build_model(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8, fusion=fusion))
    with pytest.raises(CmiError, match="concat or sum"):
        OGMGE(build, TrainConfig(batch_size=8), OGMGEHparams(), CPU)


def test_sum_fusion_is_accepted():
    build = lambda: build_model(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8, fusion="sum"))
    assert OGMGE(build, TrainConfig(batch_size=8), OGMGEHparams(), CPU).encoder_params["audio"]


def test_client_update_is_deterministic_given_the_seed():
    start = initial_state(method(FedAvg))
    pool = make_pool(24, missing=0.3)
    run = lambda cls, seed: method(cls).client_update(start, pool, client(range(24)), 0, seed=seed).state
    update = run(OGMGE, 3)
    assert_states_equal(update, run(OGMGE, 3))
    assert any(not torch.equal(update[k], v) for k, v in run(OGMGE, 4).items())
    assert any(not torch.equal(update[k], v) for k, v in run(FedAvg, 3).items())   # the modulation acts


def test_negative_alpha_is_a_user_error():
    with pytest.raises(CmiError, match="alpha"):
        OGMGEHparams(alpha=-0.1)
