import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.errors import CmiError
from pipelines.fl import ClientUpdate, FedAvg, FedAvgHparams, RoundContext
from pipelines.fl.mmpareto import MMPareto, MMParetoHparams, combine_gradients
from tests.fl.common import SPECS, assert_states_equal, client, factory, initial_state, make_pool, method, only

GAMMA = 1.5


def _combine(g1, g2, gamma=GAMMA):
    new, step = combine_gradients([torch.tensor(g1)], [torch.tensor(g2)], gamma)
    return new[0].tolist(), step


def test_positive_cosine_takes_equal_weights_and_gamma_times_the_sum():
    new, step = _combine([1.0, 0.0], [1.0, 1.0])
    # cos = 1/√2 > 0: (½, ½), d = (1, .5), rescaled to ‖g1 + g2‖ = ‖(2, 1)‖: γ·(2, 1)
    assert float(step.weight) == 0.5 and not bool(step.conflict)
    assert float(step.cosine) == pytest.approx(1 / math.sqrt(2))
    assert new == pytest.approx([3.0, 1.5])


def test_negative_cosine_takes_the_min_norm_weights():
    new, step = _combine([1.0, 0.0], [-1.0, 1.0])
    # n11 = 1, n12 = −1, n22 = 2: w = (n22 − n12)/(n11 + n22 − 2·n12) = 3/5; d = .6·g1 + .4·g2 = (.2, .4),
    # orthogonal to g1 − g2 = (2, −1) (the min-norm point); ‖g1 + g2‖ = ‖(0, 1)‖ = 1
    assert float(step.weight) == pytest.approx(0.6) and bool(step.conflict)
    assert float(step.cosine) == pytest.approx(-1 / math.sqrt(2))
    norm_d = math.sqrt(0.2 ** 2 + 0.4 ** 2)
    assert new == pytest.approx([GAMMA * 0.2 / norm_d, GAMMA * 0.4 / norm_d])
    assert math.hypot(*new) == pytest.approx(GAMMA * 1.0)          # rescaled to γ·‖g1 + g2‖


def test_zero_cosine_is_a_conflict_and_the_rescaling_follows_gamma():
    new, step = _combine([2.0, 0.0], [0.0, 1.0], gamma=2.0)
    # n12 = 0 (not positive): w = (1 − 0)/(4 + 1) = 1/5, d = (.4, .8), ‖d‖ = √.8; ‖g1 + g2‖ = √5
    assert float(step.weight) == pytest.approx(0.2) and bool(step.conflict)
    scale = 2.0 * math.sqrt(5) / math.sqrt(0.8)                    # = 5
    assert new == pytest.approx([scale * 0.4, scale * 0.8])


def test_degenerate_pairs():
    new, step = _combine([1.0, 0.0], [-2.0, 0.0])
    # opposite, 0 on the segment (w = 2/3): Pareto-stationary, no direction -> zero gradient
    assert float(step.weight) == pytest.approx(2 / 3) and new == [0.0, 0.0]
    new, step = _combine([1.0, 2.0], [0.0, 0.0])                   # nothing to conflict with: γ·(g1 + g2)
    assert not bool(step.conflict) and float(step.cosine) == 0.0 and new == pytest.approx([1.5, 3.0])


def test_the_encoder_is_one_vector_across_its_parameters():
    # g1 = (1, 0, 3), g2 = (−1, 1, 0) split over three parameters; the third has no L_m gradient
    g1 = [torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]), None]
    g2 = [torch.tensor([-1.0]), torch.tensor([1.0]), None, None]
    new, step = combine_gradients(g1, g2, GAMMA)
    # n11 = 10, n12 = −1, n22 = 2: w = 3/14, d = (−8, 11, 9)/14, g1 + g2 = (0, 1, 3)
    w = 3 / 14
    d = [w * 1 - (1 - w), (1 - w) * 1, w * 3]
    scale = GAMMA * math.sqrt(10) / math.sqrt(sum(v * v for v in d))
    assert float(step.weight) == pytest.approx(w)
    assert [float(t) for t in new[:3]] == pytest.approx([scale * v for v in d])
    assert new[3] is None


def _step(mm, pool, rows=range(8)):
    """local_loss + backward on ``rows``; the ctx, the loss, gradients before and after after_backward."""
    model = mm.model
    model.load_state_dict(initial_state(mm))
    model.train()
    batch = next(pool.batches(list(rows), len(rows), None, shuffle=False))
    ctx = mm.Context(client=client(rows), round_idx=0)
    model.zero_grad(set_to_none=True)
    outputs = model(batch.inputs, batch.present)
    loss = mm.local_loss(model, outputs, batch, ctx)
    loss.backward()
    before = _grads(model)
    mm.after_backward(model, outputs, batch, ctx, 0, torch.Generator().manual_seed(0))
    return batch, loss, before, _grads(model), ctx


def _grads(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("aux_weight", [1.0, 2.0])
def test_after_backward_replaces_only_encoder_gradients_by_the_pareto_combination(aux_weight):
    mm = method(MMPareto, MMParetoHparams(aux_weight=aux_weight))
    pool = make_pool(16, missing=0.3)            # rows 0-7: multimodal and one-modality rows
    batch, loss, before, after, ctx = _step(mm, pool)
    assert ctx.pending is None                   # consumed
    # by hand, on a fresh forward: L_F = routed CE, L_m = λ1·CE(self_m) on the multimodal rows, both / batch size
    model = mm.model
    model.load_state_dict(initial_state(mm))
    outputs = model(batch.inputs, batch.present)
    valid, both = outputs.routed_valid, outputs.valid["fused"]
    assert 0 < int(both.sum()) < int(valid.sum())
    n, y = valid.sum(), batch.labels
    l_f = F.cross_entropy(outputs.routed[valid], y[valid], reduction="sum") / n
    fedavg_loss = method(FedAvg, FedAvgHparams(aux_weight=aux_weight)).local_loss(model, outputs, batch,
                                                                                      RoundContext(client=client(range(len(y))), round_idx=0))
    assert float(loss.detach()) == pytest.approx(float(fedavg_loss.detach()), rel=1e-6)
    names = dict(model.named_parameters())
    conflicts = 0
    for m in ("audio", "visual"):
        keys = [k for k in names if mm.param_groups[k] == f"{m}.encoder"]
        l_m = aux_weight * F.cross_entropy(outputs.self_logits[m][both], y[both], reduction="sum") / n
        flat = lambda gs: torch.cat([(torch.zeros_like(names[k]) if g is None else g).flatten()
                                     for k, g in zip(keys, gs)])
        g1 = flat(torch.autograd.grad(l_f, [names[k] for k in keys], retain_graph=True, allow_unused=True)).double()
        g2 = flat(torch.autograd.grad(l_m, [names[k] for k in keys], retain_graph=True, allow_unused=True)).double()
        assert torch.allclose(torch.cat([before[k].flatten() for k in keys]).double(), g1 + g2, atol=1e-6)
        n11, n12, n22 = g1 @ g1, g1 @ g2, g2 @ g2
        w = (n22 - n12) / (n11 + n22 - 2 * n12) if n12 <= 0 else 0.5
        conflicts += int(n12 <= 0)
        d = w * g1 + (1 - w) * g2
        expected = GAMMA * (g1 + g2).norm() / d.norm() * d
        got = torch.cat([after[k].flatten() for k in keys]).double()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7), m
        assert float(got.norm()) == pytest.approx(GAMMA * float((g1 + g2).norm()), rel=1e-5)
    assert conflicts >= 1                        # the MGDA branch is exercised
    for k, g in before.items():
        if not mm.param_groups[k].endswith(".encoder"):      # classifiers and fusion: untouched
            assert (g is None and after[k] is None) or torch.equal(g, after[k]), k
    assert after["fusion.out.weight"] is not None and after["branches.audio.classifier.weight"] is not None
    assert ctx.stats.shape == (2, 3) and ctx.stats[:, 0].tolist() == [1.0, 1.0]     # one step each
    assert int(ctx.stats[:, 1].sum()) == conflicts


def test_batch_without_multimodal_samples_keeps_the_plain_gradient():
    mm = method(MMPareto)
    batch, loss, before, after, ctx = _step(mm, only(make_pool(16), "audio"))
    assert ctx.stats is None
    assert all((before[k] is None and after[k] is None) or torch.equal(before[k], after[k]) for k in before)
    assert after["branches.visual.encoder.cnn.0.0.weight"] is None


def test_client_update_is_deterministic_and_differs_from_fedavg():
    start = initial_state(method(FedAvg))
    pool = make_pool(24, missing=0.3)
    run = lambda cls, hp, seed=3: method(cls, hp).client_update(start, pool, client(range(24)), 0, seed=seed)
    update = run(MMPareto, MMParetoHparams())
    assert_states_equal(update.state, run(MMPareto, MMParetoHparams()).state)
    plain = run(FedAvg, FedAvgHparams(aux_weight=1.0)).state
    assert any(not torch.equal(update.state[k], plain[k]) for k in plain)
    changed = {mm_key for mm_key in plain if not torch.equal(update.state[mm_key], plain[mm_key])}
    assert any(".encoder." in k for k in changed)
    steps = update.metrics["pareto"]
    assert len(steps) == 2 and steps[0][0] == steps[1][0] == 3           # 24 rows / batch 8, all with a multimodal row


def test_server_keeps_the_round_conflict_shares_for_logging_only():
    mm = method(MMPareto)
    start = initial_state(mm)
    state = mm.init_server_state(3, 3)
    assert mm.server_metrics(state) == {}
    updates = [ClientUpdate(0, 8, start, {"fusion"}, {"loss": 1.0, "pareto": [[3, 1, 0.6], [3, 3, -0.9]]}),
               ClientUpdate(1, 8, start, {"fusion"}, {"loss": 1.0}),
               ClientUpdate(2, 8, start, {"fusion"}, {"loss": 1.0, "pareto": [[1, 0, 0.2], [1, 1, -0.1]]})]
    _, state = mm.server_update(start, state, updates, 0)
    metrics = mm.server_metrics(state)          # per modality, over 3 + 1 steps
    assert metrics.keys() == {"conflict_share", "mean_cosine"}
    assert metrics["conflict_share"] == pytest.approx([1 / 4, 1.0])
    assert metrics["mean_cosine"] == pytest.approx([0.8 / 4, -1.0 / 4])
    assert mm.broadcast(state) == {}


def test_hparams_and_model_checks():
    assert MMParetoHparams().aux_weight == 1.0 and MMParetoHparams().gamma == 1.5
    for bad, key in ((dict(gamma=0.0), "mmpareto.gamma"), (dict(aux_weight=0.0), "mmpareto.aux_weight")):
        with pytest.raises(CmiError, match=key):
            MMParetoHparams(**bad)
    with pytest.raises(CmiError, match="two modalities"):
        MMPareto(factory(SPECS[:1]), method(FedAvg).train, MMParetoHparams(), torch.device("cpu"))
