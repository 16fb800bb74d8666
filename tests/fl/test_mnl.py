import math

import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import Batch, ClientUpdate, FedAvg, FedAvgHparams
from pipelines.fl.mnl import MNL, MNLHparams, guidance, negative_learning
from pipelines.models import ModelOutputs
from tests.fl.common import SPECS, assert_states_equal, client, factory, initial_state, make_pool, method

LAMBDA = 0.7
C = 3
# Five rows, labels 0, 1, 2, 0, 1; rows 0-3 have both modalities, row 4 audio only.
LABELS = torch.tensor([0, 1, 2, 0, 1])
FUSED = [[2.0, 1.0, 0.0],      # y 0: strongest wrong class j = 1
         [0.0, 3.0, 1.0],      # y 1: j = 2
         [1.0, 0.0, 5.0],      # y 2: j = 0
         [0.0, 0.0, 1.0],      # y 0: j = 2
         [0.0, 1.0, 0.0]]      # audio-only row: its <audio>_only path
AUDIO = [[3.0, 0.0, 0.0],      # ξ_A = 3 − 0 = 3,  p_A[y] = e³/(e³+2) = .909
         [0.0, 1.0, 0.5],      # ξ_A = 1 − .5 = .5, p_A[y] = e/(1+e+e^.5) = .506
         [0.0, 0.0, 1.0],      # ξ_A = 1 − 0 = 1,  p_A[y] = e/(e+2) = .576
         [2.0, 1.9, 0.0],      # ξ_A = 2 − 0 = 2 (with A's own strongest wrong class 1 it would be .1), p_A[y] = .490
         [5.0, 0.0, 0.0]]
VISUAL = [[1.0, 0.0, 2.0],     # ξ_B = 1 − 0 = 1,  p_B[y] = e/(e+1+e²) = .245  -> A guides B
          [0.0, 2.0, 0.0],     # ξ_B = 2 − 0 = 2,  p_B[y] = e²/(e²+2) = .787   -> B guides A
          [0.0, -5.0, 0.5],    # ξ_B = .5 − 0 = .5, p_B[y] = .621: ξ_A > ξ_B but p_A < p_B -> none
          [2.0, 0.0, 1.5],     # ξ_B = 2 − 1.5 = .5, p_B[y] = .574: ξ_A > ξ_B but p_A < p_B -> none
          [0.0, 0.0, 0.0]]     # absent: zeros, as the model fills them


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def hand_term(form, weight=LAMBDA):
    """Σ over the guided rows (0: A guides B, 1: B guides A) of the per-sample term, by hand."""
    total = 0.0
    for row, weak, guide in ((0, VISUAL[0], AUDIO[0]), (1, AUDIO[1], VISUAL[1])):
        y = int(LABELS[row])
        p_w, p_s = softmax(weak), softmax(guide)
        others = [c for c in range(C) if c != y]
        if form == "authors":
            total += (-math.log(p_w[y]) - weight * sum(p_s[c] * math.log(p_w[c]) for c in others)) / C
        else:
            total += -weight * sum(p_s[c] * math.log(1 - p_w[c]) for c in others)
    return total


def test_guidance_mask_by_hand():
    fused, a, b = (torch.tensor(x[:4]) for x in (FUSED, AUDIO, VISUAL))
    a_guides_b, b_guides_a = guidance(fused, a, b, LABELS[:4])
    assert a_guides_b.tolist() == [True, False, False, False]
    assert b_guides_a.tolist() == [False, True, False, False]
    # j comes from the fused output: with the fused row 3 pointing at class 1 instead, ξ_A = .1 <= ξ_B
    # = 2 − 0 = 2 and p_A <= p_B, so B guides A there
    fused[3] = torch.tensor([0.0, 1.0, 0.0])
    assert guidance(fused, a, b, LABELS[:4])[1].tolist() == [False, True, False, True]


@pytest.mark.parametrize("form", ["authors", "complement"])
def test_negative_learning_by_hand(form):
    weak = torch.tensor([VISUAL[0], AUDIO[1]])
    guide = torch.tensor([AUDIO[0], VISUAL[1]])
    per_sample = negative_learning(weak, guide, LABELS[:2], LAMBDA, form)
    assert per_sample.shape == (2,)
    assert float(per_sample.sum()) == pytest.approx(hand_term(form), rel=1e-6)
    # the "authors" form includes the weak modality's target CE / C: it stays at λ = 0
    at_zero = float(negative_learning(weak, guide, LABELS[:2], 0.0, form).sum())
    expected = (-math.log(softmax(VISUAL[0])[0]) - math.log(softmax(AUDIO[1])[1])) / C if form == "authors" else 0.0
    assert at_zero == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_complement_form_is_finite_when_a_wrong_class_is_certain():
    weak = torch.tensor([[0.0, 200.0, 0.0]])          # p_w[1] = 1 in float32
    value = negative_learning(weak.requires_grad_(), torch.zeros(1, 3), torch.tensor([0]), LAMBDA, "complement")
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(weak.grad).all()
    # guide uniform: p_s[1] = p_s[2] = 1/3; p_w[1] clamped at 1 − 1e-6, p_w[2] = 0 adds log 1 = 0
    assert float(value.detach()) == pytest.approx(-LAMBDA / 3 * math.log(1e-6), rel=1e-3)


def _outputs():
    leaves = [torch.tensor(x).requires_grad_() for x in (FUSED, AUDIO, VISUAL)]
    routed, audio, visual = leaves
    outputs = ModelOutputs(routed=routed, routed_valid=torch.ones(5, dtype=torch.bool),
                           self_logits={"audio": audio, "visual": visual}, infiltration_logits={}, paths={},
                           valid={"fused": torch.tensor([True, True, True, True, False])})
    return outputs, leaves


def _losses(form, round_idx=1, warmup_rounds=1):
    mnl = method(MNL, MNLHparams(weight=LAMBDA, form=form, warmup_rounds=warmup_rounds))
    ctx = mnl.Context(client=client(range(5)), round_idx=round_idx)
    batch = Batch(inputs={}, present={}, labels=LABELS, indices=torch.arange(5))
    outputs, leaves = _outputs()
    loss = mnl.local_loss(mnl.model, outputs, batch, ctx)
    shared_outputs, shared_leaves = _outputs()
    shared = method(FedAvg, FedAvgHparams(aux_weight=1.0)).local_loss(mnl.model, shared_outputs, batch, ctx)
    return loss, leaves, shared, shared_leaves, ctx


@pytest.mark.parametrize("form", ["authors", "complement"])
def test_loss_is_ce_of_the_three_heads_plus_the_per_sample_mean_term(form):
    loss, _, shared, _, ctx = _losses(form)
    assert MNLHparams().aux_weight == 1.0                     # CE(z_F) + CE(z_A) + CE(z_B)
    # the term's sum over the guided rows, divided by the batch's 5 rows
    assert float(loss.detach()) == pytest.approx(float(shared.detach()) + hand_term(form) / 5, rel=1e-6)
    assert ctx.guidance.tolist() == [4, 1, 1]


@pytest.mark.parametrize("form", ["authors", "complement"])
def test_term_gradient_reaches_only_the_guided_modality(form):
    loss, leaves, shared, shared_leaves, _ = _losses(form)
    grads = torch.autograd.grad(loss, leaves)
    shared_grads = torch.autograd.grad(shared, shared_leaves)
    routed, audio, visual = (g - s for g, s in zip(grads, shared_grads))
    assert torch.allclose(routed, torch.zeros(5, C), atol=1e-7)        # j is an argmax: no gradient
    nonzero = lambda g: (g.abs() > 1e-7).any(dim=1).tolist()
    assert nonzero(visual) == [True, False, False, False, False]      # row 0: A guides B, B learns
    assert nonzero(audio) == [False, True, False, False, False]       # row 1: B guides A, A learns
    # (and the guides get nothing: their probabilities are detached)
    if form == "authors":
        # d/dz_B of [−log p_B[0] − λ·Σ_{c≠0} p_A[c]·log p_B[c]] / C / 5
        #   = [p_B − e_0 + λ·(S·p_B − q)] / 15,
        # S = p_A[1] + p_A[2], q = (0, p_A[1], p_A[2])
        p_b, p_a = softmax(VISUAL[0]), softmax(AUDIO[0])
        s = p_a[1] + p_a[2]
        expected = [(p_b[c] - (c == 0) + LAMBDA * (s * p_b[c] - (p_a[c] if c else 0.0))) / 15 for c in range(C)]
        assert visual[0].tolist() == pytest.approx(expected, abs=1e-7)


def test_warmup_rounds_give_exactly_the_ce_only_loss():
    loss, _, shared, _, ctx = _losses("authors", round_idx=1, warmup_rounds=2)
    assert torch.equal(loss, shared) and ctx.guidance is None
    loss, _, shared, _, _ = _losses("complement", round_idx=0, warmup_rounds=1)
    assert torch.equal(loss, shared)
    loss, _, shared, _, _ = _losses("authors", round_idx=0, warmup_rounds=0)
    assert not torch.equal(loss, shared)


def test_client_update_warmup_is_fedavg_then_the_term_acts_deterministically():
    start = initial_state(method(FedAvg))
    pool = make_pool(24, missing=0.3)
    run = lambda cls, hp, round_idx, seed=3: method(cls, hp).client_update(start, pool, client(range(24)), round_idx,
                                                                        seed=seed)
    fedavg = FedAvgHparams(aux_weight=1.0)
    warm = run(MNL, MNLHparams(), 0)
    assert_states_equal(warm.state, run(FedAvg, fedavg, 0).state)
    assert "guidance" not in warm.metrics
    update = run(MNL, MNLHparams(), 1)
    assert_states_equal(update.state, run(MNL, MNLHparams(), 1).state)
    assert any(not torch.equal(update.state[k], v) for k, v in run(FedAvg, fedavg, 1).state.items())
    assert any(not torch.equal(update.state[k], v) for k, v in run(MNL, MNLHparams(form="complement"), 1).state.items())
    rows, a_guides_b, b_guides_a = update.metrics["guidance"]
    assert rows == int((pool.present["audio"] & pool.present["visual"]).sum())    # one epoch: every multimodal row once
    assert a_guides_b + b_guides_a <= rows


def test_server_keeps_the_round_guidance_shares_for_logging_only():
    mnl = method(MNL)
    start = initial_state(mnl)
    state = mnl.init_server_state(4, C)
    assert mnl.server_metrics(state) == {}
    updates = [ClientUpdate(0, 10, start, {"fusion"}, {"loss": 1.0, "guidance": [10, 3, 5]}),
               ClientUpdate(1, 6, start, {"fusion"}, {"loss": 1.0}),                 # warm-up / unimodal client
               ClientUpdate(2, 30, start, {"fusion"}, {"loss": 1.0, "guidance": [30, 6, 20]})]
    _, state = mnl.server_update(start, state, updates, 1)
    # audio guided (visual guides audio) on 5 + 20 of 40 samples, visual guided on 3 + 6
    assert mnl.server_metrics(state) == {"guided_share": pytest.approx([25 / 40, 9 / 40])}
    assert mnl.broadcast(state) == {}


def test_hparams_and_model_checks():
    for bad, key in ((dict(weight=-0.1), "mnl.weight"), (dict(form="kl"), "mnl.form"),
                     (dict(warmup_rounds=-1), "mnl.warmup_rounds")):
        with pytest.raises(CmiError, match=key):
            MNLHparams(**bad)
    with pytest.raises(CmiError, match="two modalities"):
        MNL(factory(SPECS[:1]), method(FedAvg).train, MNLHparams(), torch.device("cpu"))
