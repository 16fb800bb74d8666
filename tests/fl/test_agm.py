import math

import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import Batch, ClientUpdate, FedAvg, FedAvgHparams, TrainConfig
from pipelines.fl.agm import AGM, AGMContext, AGMHparams, coefficients, ratios, shapley_contributions
from pipelines.models import ModelConfig, ModelOutputs, build_model
from pipelines.models.heads import ConcatFusion
from tests.fl.common import CPU, NUM_CLASSES, SPECS, assert_states_equal, client, initial_state, make_pool, method, only

A, V = "audio", "visual"


def test_coefficients_by_hand_with_the_clamp():
    f64 = lambda *v: torch.tensor(v, dtype=torch.float64)
    # s_A = 1, s_B = 2: A has the lower loss, r_A = e, r_B = 1/e
    assert ratios(f64(1.0, 2.0)).tolist() == pytest.approx([math.e, 1 / math.e])
    r, r_bar = f64(0.5, 3.0, 0.1, 1e-3), f64(1.5, 1.0, 20.0, 1e6)
    # r̄ − r = 1, −2 (ahead of its mean: slowed), 19.9 and ~1e6 (both clamped to 10)
    assert coefficients(r, r_bar, 1.0).tolist() == pytest.approx([math.e, math.exp(-2), math.exp(10), math.exp(10)])
    half = [math.exp(0.5), math.exp(-1), math.exp(5), math.exp(5)]
    assert coefficients(r, r_bar, 0.5).tolist() == pytest.approx(half)
    assert coefficients(r, r_bar, 0.0).tolist() == [1.0] * 4


def test_modulation_uses_the_running_means_then_updates_them():
    agm = method(AGM, AGMHparams(alpha=0.5))
    ctx = AGMContext(client=client([0]), round_idx=0, score_mean=torch.tensor([0.5, 2.0], dtype=torch.float64),
                     steps=3)
    k_a, k_b = agm.modulation(ctx, torch.tensor([1.2, 0.9], dtype=torch.float64)).tolist()
    # r = (exp(0.9 − 1.2), exp(1.2 − 0.9)); r̄ = (exp(2 − 0.5), exp(0.5 − 2))
    assert k_a == pytest.approx(math.exp(0.5 * min(math.exp(1.5) - math.exp(-0.3), 10)))
    assert k_b == pytest.approx(math.exp(0.5 * (math.exp(-1.5) - math.exp(0.3))))
    assert ctx.steps == 4
    assert ctx.score_mean.tolist() == pytest.approx([(3 * 0.5 + 1.2) / 4, (3 * 2.0 + 0.9) / 4])
    assert ctx.k_sum.tolist() == pytest.approx([k_a, k_b]) and ctx.modulated == 1


def test_shapley_decomposition_by_hand_on_a_linear_fusion():
    head = ConcatFusion(2, 3)
    with torch.no_grad():
        head.out.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 1.0, 0.0], [2.0, 0.0, 0.0, -2.0]]))
        head.out.bias.copy_(torch.tensor([0.5, -0.5, 1.0]))
    u_a, u_b = torch.tensor([[1.0, 1.0], [2.0, -1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    f_00, phi_a, phi_b = shapley_contributions(head, u_a, u_b)
    # f = W_a u_a + W_b u_b + b: φ_A = W_a u_a, φ_B = W_b u_b, f(0,0) = b
    assert torch.allclose(phi_a, torch.tensor([[3.0, -1.0, 2.0], [0.0, 1.0, 4.0]]))
    assert torch.allclose(phi_b, torch.tensor([[4.0, 0.0, -2.0], [7.0, 1.0, -2.0]]))
    assert torch.allclose(f_00, torch.tensor([[0.5, -0.5, 1.0]] * 2))
    assert torch.allclose(f_00 + phi_a + phi_b, head(u_a, u_b))


def test_shapley_splits_an_interaction_equally():
    fusion = lambda x_a, x_b: x_a + 2 * x_b + x_a * x_b
    a, b = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, -1.0]])
    f_00, phi_a, phi_b = shapley_contributions(fusion, a, b)
    assert torch.equal(f_00, torch.zeros(1, 2))
    assert torch.allclose(phi_a, a + a * b / 2) and torch.allclose(phi_b, 2 * b + a * b / 2)
    assert torch.allclose(phi_a + phi_b, fusion(a, b) - f_00)


def _outputs(model, labels):
    """Hand-built outputs on feature leaves: rows 0-3 multimodal, row 4 audio-only (FedCMI's fill
    is irrelevant here: its routed logits are F(u_A, 0))."""
    g = torch.Generator().manual_seed(1)
    u_a, u_b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    u_b[4] = 0
    u_a.requires_grad_(), u_b.requires_grad_()
    both = torch.tensor([True, True, True, True, False])
    fused = model.fusion(u_a, u_b)
    routed = torch.where(both.unsqueeze(1), fused, model.fusion(u_a, torch.zeros_like(u_b)))
    self_logits = {m: model.branches[m].classifier(u) for m, u in ((A, u_a), (V, u_b))}
    outputs = ModelOutputs(routed=routed, routed_valid=torch.ones(5, dtype=torch.bool), self_logits=self_logits,
                           infiltration_logits={}, paths={"fused": fused},
                           valid={"fused": both, "audio_only": torch.ones(5, dtype=torch.bool),
                                  "visual_only": both}, features={A: u_a, V: u_b})
    return outputs, Batch(inputs={}, present={}, labels=labels, indices=torch.arange(5)), (u_a, u_b)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_loss_is_unmodulated_while_feature_gradients_are_scaled_by_k(fusion):
    build = lambda: build_model(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8, fusion=fusion))
    agm = AGM(build, TrainConfig(batch_size=8), AGMHparams(aux_weight=0.0, alpha=1.0), CPU)
    fedavg = FedAvg(build, TrainConfig(batch_size=8), FedAvgHparams(aux_weight=0.0), CPU)
    labels = torch.tensor([0, 1, 2, 0, 1])
    ctx = AGMContext(client=client([0]), round_idx=0, score_mean=torch.tensor([0.5, 2.0], dtype=torch.float64),
                     steps=3)
    outputs, batch, (u_a, u_b) = _outputs(agm.model, labels)
    loss = agm.local_loss(agm.model, outputs, batch, ctx)
    reference = fedavg.local_loss(agm.model, outputs, batch, ctx)
    assert torch.equal(loss, reference)                          # forward: bit for bit FedAvg's loss
    grads = torch.autograd.grad(loss, (u_a, u_b), retain_graph=True)   # the graphs share the fused pass
    plain = torch.autograd.grad(reference, (u_a, u_b))
    k_a, k_b = ctx.k_sum.tolist()
    # the scores by hand: ψ_m = W_m u_m + f(0,0)/2 on the multimodal rows, f(0,0) the head's bias (sum)
    head = agm.model.fusion
    if fusion == "concat":
        w_a, w_b = head.out.weight.detach()[:, :8], head.out.weight.detach()[:, 8:]
        bias = head.out.bias.detach()
    else:
        w_a, w_b = head.out_a.weight.detach(), head.out_b.weight.detach()
        bias = (head.out_a.bias + head.out_b.bias).detach()
    y = labels[:4]
    score = lambda psi: -psi.log_softmax(1)[torch.arange(4), y].mean().item()
    s_a, s_b = score(u_a.detach()[:4] @ w_a.T + bias / 2), score(u_b.detach()[:4] @ w_b.T + bias / 2)
    assert k_a == pytest.approx(math.exp(min(math.exp(2.0 - 0.5) - math.exp(s_b - s_a), 10)), rel=1e-5)
    assert k_b == pytest.approx(math.exp(min(math.exp(0.5 - 2.0) - math.exp(s_a - s_b), 10)), rel=1e-5)
    assert k_a > 1.5 and k_b < 0.9
    # float32 rounding of the four passes' gradient sums: ~1e-7 absolute on gradients of ~1e-2
    assert torch.allclose(grads[0][:4], k_a * plain[0][:4], rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads[1][:4], k_b * plain[1][:4], rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads[0][4], plain[0][4])              # the audio-only row: unmodulated
    assert ctx.steps == 4


def test_real_model_step_same_loss_other_encoder_gradients():
    agm, fedavg = method(AGM), method(FedAvg)
    pool = make_pool(16, missing=0.3)
    batch = next(pool.batches(np.arange(8), 8, None, shuffle=False))
    grads = {}
    for name, m in (("agm", agm), ("fedavg", fedavg)):
        model = m.model
        model.load_state_dict(initial_state(m))
        ctx = AGMContext(client=client([0]), round_idx=0, score_mean=torch.tensor([0.2, 1.5], dtype=torch.float64),
                         steps=10)
        outputs = model(batch.inputs, batch.present)
        loss = m.local_loss(model, outputs, batch, ctx)
        loss.backward()
        grads[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(grads["agm"][0], grads["fedavg"][0])
    assert grads["agm"][1].keys() == grads["fedavg"][1].keys()
    modulated, plain = grads["agm"][1], grads["fedavg"][1]
    for m in (A, V):      # the encoders' gradients are modulated, the classifiers' (self CE only) are not
        assert any(not torch.allclose(modulated[n], plain[n]) for n in plain if n.startswith(f"branches.{m}.encoder."))
        assert torch.allclose(modulated[f"branches.{m}.classifier.weight"], plain[f"branches.{m}.classifier.weight"])


def test_batch_without_multimodal_rows_is_not_modulated():
    agm = method(AGM)
    pool = only(make_pool(16), "audio")
    batch = next(pool.batches(np.arange(8), 8, None, shuffle=False))
    model = agm.model
    model.load_state_dict(initial_state(agm))
    outputs = model(batch.inputs, batch.present)
    ctx = AGMContext(client=client([0]), round_idx=0)
    reference = method(FedAvg).local_loss(model, outputs, batch, ctx)
    assert torch.equal(agm.local_loss(model, outputs, batch, ctx), reference)
    assert ctx.steps == 0 and ctx.modulated == 0 and ctx.score_mean.tolist() == [0.0, 0.0]
    update = agm.client_update(initial_state(agm), pool, client(range(16), ("audio",)), 0, seed=1)
    assert update.client_state is None and "agm_k" not in update.metrics


class _Recording(AGM):
    def modulation(self, ctx, scores):
        before = (ctx.score_mean.tolist(), ctx.steps)
        k = super().modulation(ctx, scores)
        self.log.append((*scores.tolist(), before, k.tolist()))
        return k


def test_running_mean_state_carries_over_two_client_updates():
    agm = method(_Recording, AGMHparams(alpha=1.0))
    agm.log = []
    pool = make_pool(24, missing=0.2)
    start = initial_state(agm)
    first = agm.client_update(start, pool, client(range(24)), 0, seed=1)
    n1 = len(agm.log)
    assert n1 == 3                                               # 3 batches, each with multimodal rows
    assert agm.log[0][2] == ([0.0, 0.0], 0)                      # no state yet: s̄ = 0, t = 0
    scores = np.array([(s_a, s_b) for s_a, s_b, _, _ in agm.log])
    assert first.client_state["steps"].tolist() == [n1]
    assert first.client_state["score_mean"].dtype == torch.float64
    assert first.client_state["score_mean"].tolist() == pytest.approx(scores.mean(0).tolist(), rel=1e-12)
    ks = np.array([k for *_, k in agm.log])
    assert first.metrics["agm_k"] == pytest.approx(ks.mean(0).tolist()) and first.metrics["agm_steps"] == n1

    second = agm.client_update(first.state, pool, client(range(24)), 1, seed=2, client_state=first.client_state)
    mean_before, steps_before = agm.log[n1][2]
    assert steps_before == n1 and mean_before == pytest.approx(first.client_state["score_mean"].tolist(), rel=1e-12)
    scores = np.array([(s_a, s_b) for s_a, s_b, _, _ in agm.log])
    assert second.client_state["steps"].tolist() == [2 * n1]
    assert second.client_state["score_mean"].tolist() == pytest.approx(scores.mean(0).tolist(), rel=1e-12)
    # every k from its step's scores and the running means before it, by hand
    for s_a, s_b, (mean, _), (k_a, k_b) in agm.log:
        assert k_a == pytest.approx(math.exp(min(math.exp(mean[1] - mean[0]) - math.exp(s_b - s_a), 10)))
        assert k_b == pytest.approx(math.exp(min(math.exp(mean[0] - mean[1]) - math.exp(s_a - s_b), 10)))
    # the state matters: the same update without it trains differently
    fresh = agm.client_update(first.state, pool, client(range(24)), 1, seed=2)
    assert any(not torch.equal(fresh.state[k], second.state[k]) for k in fresh.state)


def test_client_update_is_deterministic_and_alpha_zero_is_fedavg():
    start = initial_state(method(FedAvg))
    pool = make_pool(24, missing=0.3)
    run = lambda cls, hp, seed=3: method(cls, hp).client_update(start, pool, client(range(24)), 0, seed=seed)
    update = run(AGM, AGMHparams(alpha=2.0))
    again = run(AGM, AGMHparams(alpha=2.0))
    assert_states_equal(update.state, again.state)
    assert update.metrics == again.metrics
    assert_states_equal(update.client_state, again.client_state)
    assert any(not torch.equal(update.state[k], v) for k, v in run(AGM, AGMHparams(alpha=2.0), 4).state.items())
    plain = run(FedAvg, None).state
    assert any(not torch.equal(update.state[k], plain[k]) for k in plain)
    off = run(AGM, AGMHparams(alpha=0.0))
    assert off.metrics["agm_k"] == [1.0, 1.0]
    assert_states_equal(off.state, plain)                        # k = 1: the added gradients are exact zeros


def test_server_reports_the_rounds_mean_k():
    agm = method(AGM)
    state0 = agm.init_server_state(3, NUM_CLASSES)
    assert agm.server_metrics(state0) == {"k_audio": None, "k_visual": None}
    start = initial_state(agm)
    upd = lambda cid, metrics: ClientUpdate(cid, 10, start, set(), {"loss": 1.0, **metrics})
    updates = [upd(0, {"agm_k": [2.0, 0.5], "agm_steps": 3}), upd(1, {"agm_k": [1.0, 1.0], "agm_steps": 1}), upd(2, {})]
    _, state = agm.server_update(start, state0, updates, 0)
    assert torch.isnan(state0["k_mean"]).all()                  # the input is not modified
    # steps-weighted: ((3·2 + 1) / 4, (3·0.5 + 1) / 4)
    assert agm.server_metrics(state) == pytest.approx({"k_audio": 1.75, "k_visual": 0.625})
    _, none = agm.server_update(start, state, [upd(2, {})], 1)
    assert agm.server_metrics(none) == {"k_audio": None, "k_visual": None}


def test_bad_settings_are_user_errors():
    for alpha in (-0.1, 51):
        with pytest.raises(CmiError, match="alpha"):
            AGMHparams(alpha=alpha)
    with pytest.raises(CmiError, match="two modalities"):
        AGM(lambda: build_model(SPECS[:1], NUM_CLASSES, ModelConfig(embed_dim=8)), TrainConfig(), AGMHparams(), CPU)
