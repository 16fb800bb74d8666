import math

import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import FedAvg, FedCMI, FedCMIHparams, FedProx, FedProxHparams
from pipelines.fl.fedcmi import class_temperatures, dominance_ratio, infiltration_loss
from tests.fl.common import NUM_CLASSES, assert_states_equal, client, initial_state, make_pool, method, only

LABELS = torch.tensor([0, 0, 1, 1, 2])     # 4 classes, class 3 absent
PROB_A = torch.tensor([0.8, 0.6, 0.5, 0.3, 0.9])   # P_A = 0.7, 0.4, 0.9
PROB_B = torch.tensor([0.1, 0.3, 0.4, 0.4, 0.3])   # P_B = 0.2, 0.4, 0.3


def test_class_temperatures_when_the_first_modality_dominates():
    t = class_temperatures(PROB_A, PROB_B, LABELS, 4, kappa=2.0)
    # r = 3.5, 1.0, 3.0; r̄ = 2.5 > 1: classes above r̄ sharpen
    # T0 = 1 / (1 + 2 ln(3.5/2.5)) = 1 / (1 + 2 * 0.336472) = 0.597748
    # T2 = 1 / (1 + 2 ln(3.0/2.5)) = 1 / (1 + 2 * 0.182322) = 0.732792
    assert t.tolist() == pytest.approx([0.5977485, 1.0, 0.7327923, 1.0], abs=1e-6)


def test_class_temperatures_when_the_second_modality_dominates():
    t = class_temperatures(PROB_B, PROB_A, LABELS, 4, kappa=2.0)
    # r = 2/7, 1, 1/3; r̄ = (2/7 + 1 + 1/3) / 3 = 0.539683 <= 1: classes below r̄ sharpen
    # T0 = 1 / (1 + 2 ln(0.539683 / 0.285714)) = 1 / (1 + 2 * 0.635989) = 0.440145
    # T2 = 1 / (1 + 2 ln(0.539683 / 0.333333)) = 1 / (1 + 2 * 0.481838) = 0.509249
    assert t.tolist() == pytest.approx([0.4401452, 1.0, 0.5092489, 1.0], abs=1e-6)


def test_class_temperatures_with_zero_and_non_finite_probabilities():
    labels = torch.tensor([0, 0, 1, 1, 2])
    prob_a = torch.tensor([0.5, 0.5, float("nan"), 1.0, 0.0])   # NaN counts as 0: P_A = 0.5, 0.5, 0
    prob_b = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0])            # P_B = 0, 0.5, 0
    t = class_temperatures(prob_a, prob_b, labels, 3, kappa=2.0)
    # P clamped to 1e-6: r = 0.5/1e-6 = 5e5, 1, 1e-6/1e-6 = 1; r̄ = (5e5 + 2) / 3 = 166667.33 > 1
    # T0 = 1 / (1 + 2 ln(5e5 / 166667.33)) = 1 / (1 + 2 * 1.098608) = 0.312772
    assert torch.isfinite(t).all()
    assert t.tolist() == pytest.approx([1 / (1 + 2 * math.log(5e5 / ((5e5 + 2) / 3))), 1.0, 1.0], abs=1e-6)
    assert t[0] == pytest.approx(0.312772, abs=1e-6)
    # every probability zero: all ratios clamp to 1, nothing sharpens
    zero = torch.zeros(5)
    assert class_temperatures(zero, zero, labels, 3, 2.0).tolist() == [1.0, 1.0, 1.0]


def test_infiltration_loss_by_hand():
    teacher = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3) / 2]])
    student = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]], requires_grad=True)
    t = torch.tensor([1.0, 0.5])
    # row 0 (t=1): p = (.75, .25), log q = (ln .25, ln .75): .75 ln 4 + .25 ln(4/3) = 1.111642
    # row 1 (t=.5): teacher/t = (0, ln 3): p = (.25, .75); student uniform: ln 2 = 0.693147
    loss = infiltration_loss(student, teacher, t)
    assert float(loss.detach()) == pytest.approx((1.1116424 + 0.6931472) / 2, abs=1e-6)
    loss.backward()
    # d/d student of mean CE at temperature t: (q - p) / (t * n)
    expected = torch.tensor([[(0.25 - 0.75) / 2, (0.75 - 0.25) / 2], [(0.5 - 0.25) / 1.0, (0.5 - 0.75) / 1.0]])
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_dominance_ratio_by_hand():
    a = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])       # p(y) = .75, .5
    b = torch.tensor([[0.0, 0.0], [0.0, math.log(4)]])       # p(y) = .5, .8
    rho = dominance_ratio(a, b, torch.tensor([0, 1]))
    assert float(rho) == pytest.approx(1.25 / 1.3, rel=1e-6)  # < 1: the second modality dominates


def _round(cmi, pool, cid_rows, round_idx=1):
    m = method(FedCMI, cmi)
    start = initial_state(m)
    model = m.model_factory()
    model.load_state_dict(start)
    rows = np.asarray(list(cid_rows))
    ctx = m.prepare_round(model, start, pool, rows, client(rows), round_idx)
    return m, start, model, ctx


def test_infiltration_gradient_reaches_only_the_weak_encoder_infiltration_projector_and_classifier():
    pool = make_pool(12)
    m, start, model, ctx = _round(FedCMIHparams(), pool, range(12))
    model.train()
    batch = next(pool.batches(np.arange(12), 12, None, shuffle=False))
    outputs = model(batch.inputs, batch.present)
    loss, weak = m.infiltration_term(outputs, batch, ctx)
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    reached = (f"branches.{weak}.encoder.", f"branches.{weak}.infiltration_projector.", f"branches.{weak}.classifier.")
    for (name, _), grad in zip(named, grads):
        if name.startswith(reached):
            assert grad is not None and grad.abs().sum() > 0, name
        else:
            assert grad is None or torch.all(grad == 0), name


def test_teacher_logits_are_the_frozen_global_models_self_logits():
    pool = make_pool(20, missing=0.3)
    m, start, _, ctx = _round(FedCMIHparams(), pool, range(20))
    global_model = m.model_factory()
    global_model.load_state_dict(start)
    global_model.eval()
    both = (pool.present["audio"] & pool.present["visual"]).numpy()
    assert ctx.teacher_rows.tolist() == np.flatnonzero(both).tolist()
    with torch.no_grad():
        out = global_model(pool.inputs, pool.present)
    for mod in ("audio", "visual"):
        assert torch.allclose(ctx.teacher_logits[mod], out.self_logits[mod][both], atol=1e-5)
    # and the temperatures come from the same probabilities
    labels = pool.labels[both]
    probs = [out.self_logits[mod][both].softmax(1).gather(1, labels[:, None]).squeeze(1) for mod in ("audio", "visual")]
    assert torch.allclose(ctx.temperatures, class_temperatures(*probs, labels, NUM_CLASSES, 2.0), atol=1e-5)


def test_warm_up_and_ablations_reduce_to_fedprox_and_fedavg():
    pool = make_pool(24, missing=0.2)
    args = (pool, client(range(24)))
    start = initial_state(method(FedAvg))
    prox = method(FedProx, FedProxHparams(mu=FedCMIHparams().mu)).client_update(start, *args, round_idx=0, seed=4)
    warm = method(FedCMI).client_update(start, *args, round_idx=0, seed=4)           # round 0 < warmup_rounds = 1
    assert_states_equal(warm.state, prox.state)
    assert "temperatures" not in warm.metrics
    off = method(FedCMI, FedCMIHparams(infiltration=False)).client_update(start, *args, round_idx=3, seed=4)
    assert_states_equal(off.state, prox.state)
    bare = method(FedCMI, FedCMIHparams(infiltration=False, proximal=False)).client_update(start, *args, round_idx=3, seed=4)
    assert_states_equal(bare.state, method(FedAvg).client_update(start, *args, round_idx=3, seed=4).state)
    on = method(FedCMI).client_update(start, *args, round_idx=1, seed=4)
    assert not torch.equal(on.state["branches.audio.infiltration_projector.weight"],
                           prox.state["branches.audio.infiltration_projector.weight"])


def test_objective_adds_weighted_infiltration_on_the_multimodal_share_of_the_batch():
    pool = make_pool(10, missing=0.5)
    hp = FedCMIHparams(infiltration_weight=1.5)
    m, start, model, ctx = _round(hp, pool, range(10))
    model.train()
    batch = next(pool.batches(np.arange(10), 10, None, shuffle=False))
    outputs = model(batch.inputs, batch.present)
    n_both = int(outputs.valid["fused"].sum())
    assert 0 < n_both < 10
    total = m.local_loss(model, outputs, batch, ctx)
    base = FedAvg.local_loss(m, model, outputs, batch, ctx)
    inf, _ = m.infiltration_term(outputs, batch, ctx)
    assert total.item() == pytest.approx((base + 1.5 * inf * n_both / 10).item(), rel=1e-6)


def test_temperatures_are_reported_with_absent_classes_at_one():
    pool = make_pool(30)
    rows = [i for i in range(30) if int(pool.labels[i]) != 2]     # this client has no class-2 sample
    update = method(FedCMI).client_update(initial_state(method(FedAvg)), pool, client(rows), round_idx=2, seed=1)
    temps = update.metrics["temperatures"]
    assert len(temps) == NUM_CLASSES and temps[2] == 1.0
    assert all(0 < t <= 1 for t in temps)
    uniform = method(FedCMI, FedCMIHparams(uniform_temperature=0.7)).client_update(
        initial_state(method(FedAvg)), pool, client(rows), round_idx=2, seed=1)
    assert uniform.metrics["temperatures"] == pytest.approx([0.7] * NUM_CLASSES)


def test_unimodal_clients_train_routed_ce_with_the_proximal_term_only():
    pool = only(make_pool(16), "audio")
    start = initial_state(method(FedAvg))
    ours = method(FedCMI).client_update(start, pool, client(range(16), ("audio",)), round_idx=2, seed=9)
    prox = method(FedProx, FedProxHparams(mu=FedCMIHparams().mu)).client_update(start, pool, client(range(16), ("audio",)), 2, seed=9)
    assert "temperatures" not in ours.metrics
    assert ours.trained_groups == {"audio.encoder", "fusion"}
    assert_states_equal(ours.state, prox.state)


@pytest.mark.parametrize("kwargs", [{"kappa": -1.0}, {"warmup_rounds": -1}, {"uniform_temperature": 0.0},
                                    {"infiltration_weight": -0.5}])
def test_bad_hyperparameters_are_user_errors(kwargs):
    with pytest.raises(CmiError):
        FedCMIHparams(**kwargs)
