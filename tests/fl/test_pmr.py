import math

import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import Batch, FedAvg, PMR, PMRHparams, TrainConfig
from pipelines.fl.measures import class_means, prototype_logits
from pipelines.models import ModelOutputs
from tests.fl.common import NUM_CLASSES, assert_states_equal, client, initial_state, make_pool, method

INF = float("inf")


def test_class_means_and_prototype_logits_by_hand():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [-1.0, 0.0]])
    means, counts = class_means(features, torch.tensor([0, 0, 2, 0]), 3)
    # class 0: rows 0, 1, 3 -> (3/3, 6/3); class 1: no rows -> 0 and count 0; class 2: row 2
    assert means.tolist() == [[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]
    assert counts.tolist() == [3.0, 0.0, 1.0]
    s = prototype_logits(torch.tensor([[1.0, 2.0], [5.0, 2.0]]), means, counts > 0)
    # row 0: ‖(1,2)−(1,2)‖ = 0, ‖(1,2)−(5,6)‖ = √32; row 1: ‖(5,2)−(1,2)‖ = 4, ‖(5,2)−(5,6)‖ = 4
    assert s[:, 1].tolist() == [-INF, -INF]          # class without a prototype
    assert s[:, [0, 2]].flatten().tolist() == pytest.approx([0.0, -math.sqrt(32), -4.0, -4.0], abs=1e-5)


# Three rows: 0 and 1 have both modalities, 2 has audio only; labels 0, 1, 0; 2-d features.
LABELS = torch.tensor([0, 1, 0])
AUDIO = torch.tensor([[0.0, 0.0], [3.0, 4.0], [7.0, 7.0]])
VISUAL = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
AUDIO_PROTOS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
# audio s: row 0 (0, −3, −4) -> p[0] = 1/(1+e⁻³+e⁻⁴); row 1 (−5, −4, −3) -> p[1] = 1/(e⁻¹+1+e)
CE_AUDIO = math.log(1 + math.exp(-3) + math.exp(-4)) + math.log(math.exp(-1) + 1 + math.e)
S_AUDIO = 1 / (1 + math.exp(-3) + math.exp(-4)) + 1 / (math.exp(-1) + 1 + math.e)    # 0.9362 + 0.2447


def _outputs_and_batch():
    g = torch.Generator().manual_seed(0)
    routed, self_a, self_v = (torch.randn(3, NUM_CLASSES, generator=g) for _ in range(3))
    features = {"audio": AUDIO.clone().requires_grad_(), "visual": VISUAL.clone().requires_grad_()}
    outputs = ModelOutputs(routed=routed, routed_valid=torch.tensor([True, True, True]),
                           self_logits={"audio": self_a, "visual": self_v}, infiltration_logits={}, paths={},
                           valid={"fused": torch.tensor([True, True, False])}, features=features)
    batch = Batch(inputs={}, present={}, labels=LABELS, indices=torch.arange(3))
    return outputs, batch


def _pmr_loss(alpha, visual_protos):
    pmr = method(PMR, PMRHparams(alpha=alpha))
    ctx = pmr.Context(client=client(range(3)), round_idx=0)
    ctx.prototypes = {"audio": AUDIO_PROTOS, "visual": visual_protos}
    ctx.known = {"audio": torch.tensor([True, True, True]), "visual": torch.tensor([True, True, False])}
    outputs, batch = _outputs_and_batch()
    shared = method(FedAvg).local_loss(pmr.model, outputs, batch, ctx)
    return pmr.local_loss(pmr.model, outputs, batch, ctx), shared, outputs


def test_weak_audio_when_rho_below_one():
    # visual prototypes at its own rows: s = (0, −√2, −inf), (−√2, 0, −inf); p[y] = 1/(1+e^−√2) each
    s_visual = 2 / (1 + math.exp(-math.sqrt(2)))
    assert S_AUDIO / s_visual < 1                            # ρ < 1: audio is the weak modality
    loss, shared, outputs = _pmr_loss(0.5, torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]))
    assert float(loss.detach()) == pytest.approx(float(shared.detach()) + 0.5 * CE_AUDIO / 3, rel=1e-6)
    (loss - shared).backward()
    assert outputs.features["visual"].grad is None           # ρ is detached; the strong term is absent
    assert outputs.features["audio"].grad[:2].abs().sum() > 0
    assert torch.isfinite(outputs.features["audio"].grad).all()   # row 0 sits on its prototype: ‖·‖ = 0
    assert torch.equal(outputs.features["audio"].grad[2], torch.zeros(2))    # row 2 is not multimodal


def test_weak_visual_when_rho_above_one():
    # swapped visual prototypes: s = (−√2, 0, −inf), (0, −√2, −inf); p[y] = 1/(1+e^√2) each
    ce_visual = 2 * math.log(1 + math.exp(math.sqrt(2)))
    assert S_AUDIO / (2 / (1 + math.exp(math.sqrt(2)))) > 1  # ρ > 1: visual is the weak modality
    loss, shared, outputs = _pmr_loss(2.0, torch.tensor([[0.0, 1.0], [1.0, 0.0], [9.0, 9.0]]))
    assert float(loss.detach()) == pytest.approx(float(shared.detach()) + 2.0 * ce_visual / 3, rel=1e-6)
    (loss - shared).backward()
    assert outputs.features["audio"].grad is None
    assert torch.isfinite(outputs.features["visual"].grad).all()   # the −inf class gives no NaN


def test_alpha_zero_loss_is_fedavg_exactly():
    loss, shared, _ = _pmr_loss(0.0, torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]))
    assert torch.equal(loss, shared)


class _Recording(PMR):
    """PMR that records, after each epoch's prototypes are computed, what training will use."""

    def epoch_batches(self, model, pool, rows, generator, ctx, epoch):
        batches = super().epoch_batches(model, pool, rows, generator, ctx, epoch)
        self.log.append(({m: p.clone() for m, p in ctx.prototypes.items()},
                         {m: k.clone() for m, k in ctx.known.items()},
                         {k: v.clone() for k, v in model.state_dict().items()}, model.training))
        return batches


def test_prototypes_are_recomputed_each_epoch_with_the_current_model_in_eval_mode():
    pmr = method(_Recording, train=TrainConfig(batch_size=8, local_epochs=2))
    pmr.log = []
    pool = make_pool(24, missing=0.3)
    start = initial_state(pmr)
    pmr.client_update(start, pool, client(range(24)), 0, seed=1)
    assert len(pmr.log) == 2
    assert_states_equal(pmr.log[0][2], start)                # epoch 0: the received model
    for prototypes, known, state, training in pmr.log:
        assert training                                      # back in train mode after collecting
        model = pmr.model_factory()
        model.load_state_dict(state)
        model.eval()                                         # BatchNorm with running statistics
        with torch.no_grad():
            features = model(pool.inputs, pool.present).features
        for m in pmr.modalities:
            has = pool.present[m]
            for c in range(NUM_CLASSES):
                rows = has & (pool.labels == c)
                assert bool(known[m][c]) == bool(rows.any())
                assert torch.allclose(prototypes[m][c], features[m][rows].mean(0), atol=1e-5), (m, c)
    assert not torch.allclose(pmr.log[0][0]["audio"], pmr.log[1][0]["audio"])   # trained in between


def test_client_update_is_deterministic_and_alpha_zero_is_fedavg():
    start = initial_state(method(FedAvg))
    pool = make_pool(24, missing=0.3)
    run = lambda cls, hp, seed=3: method(cls, hp).client_update(start, pool, client(range(24)), 0, seed=seed).state
    strong = run(PMR, PMRHparams(alpha=2.0))
    assert_states_equal(strong, run(PMR, PMRHparams(alpha=2.0)))
    plain = run(FedAvg, None)
    assert any(not torch.equal(strong[k], plain[k]) for k in plain)
    assert_states_equal(run(PMR, PMRHparams(alpha=0.0)), plain)


def test_negative_alpha_is_a_user_error():
    with pytest.raises(CmiError, match="alpha"):
        PMRHparams(alpha=-1)
