"""ARM (shared/spec/methods.md, a reconstruction): the orthonormality, alignment and distillation
terms by hand, the loss and its stop-gradients, W/S decided by the server from evaluated records,
warm-up = FedAvg, the roles of P and Q, the network, determinism."""

import math

import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import Batch, ClientUpdate, FedAvg, TrainConfig, average_groups
from pipelines.fl.arm import ARM, ARMHparams, ARMNet, alignment_sum, distillation_sum, orthonormality_penalty
from pipelines.models import ModelConfig, ModelOutputs, build_model
from tests.fl.common import CPU, NUM_CLASSES, SPECS, assert_states_equal, client, make_pool, only

ARM_KEYS = ("arm_projection.", "arm_classifier.")


def arm_method(hparams=None, embed_dim: int = 8, train: TrainConfig = TrainConfig(batch_size=8), specs=SPECS):
    hparams = hparams if hparams is not None else ARMHparams(proj_dim=4)
    cfg = ModelConfig(embed_dim=embed_dim)
    return ARM(lambda: ARM.network(specs, NUM_CLASSES, cfg, hparams, seed=0), train, hparams, CPU)


def fedavg_method(embed_dim: int = 8, train: TrainConfig = TrainConfig(batch_size=8)):
    cfg = ModelConfig(embed_dim=embed_dim)
    return FedAvg(lambda: build_model(SPECS, NUM_CLASSES, cfg, seed=0), train, ARMHparams(proj_dim=4), CPU)


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# ------------------------------------------------------------------------------- terms by hand

def test_orthonormality_penalty_by_hand():
    p = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    # PPᵀ = [[2, 1], [1, 5]]; − I = [[1, 1], [1, 4]]; squared entries 1 + 1 + 1 + 16
    assert float(orthonormality_penalty(p)) == pytest.approx(19.0)
    rotation = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])          # orthonormal rows
    assert float(orthonormality_penalty(rotation)) == pytest.approx(0.0, abs=1e-12)
    assert float(orthonormality_penalty(2 * rotation)) == pytest.approx(2 * 3.0 ** 2)   # 4I − I per row


# two multimodal rows (0, 1) and one audio-only row (2); W = visual, S = audio; d = 3, k = 2, C = 3
LABELS = torch.tensor([2, 1, 0])
U_W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])      # visual absent on row 2
U_S = torch.tensor([[2.0, 0.0, 1.0], [3.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
P = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]])       # P u_W: (1, 0), (1, 1); ‖PPᵀ − I‖² = 19
Q = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])       # Q u_S: (1, 2), (0, 3)
G_WEIGHT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
G_BIAS = torch.tensor([0.0, 0.0, -1.0])                   # G(P u_W): (1, 0, 0), (1, 1, 1)
S_SELF = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [7.0, 0.0, 0.0]])
ALIGN = (0 ** 2 + 2 ** 2) + (1 ** 2 + 2 ** 2)             # (1,0)−(1,2) and (1,1)−(0,3): 4 + 5
CE_P = math.log(math.e + 2) + math.log(3)                  # −log softmax(1,0,0)[2], −log softmax(1,1,1)[1]
# τ = 2: row 0 KL(softmax(1,0,0) ‖ softmax(.5,0,0)), row 1 KL(softmax(0,0,1) ‖ uniform)
KL_TAU2 = kl(softmax([1, 0, 0]), softmax([0.5, 0, 0])) + kl(softmax([0, 0, 1]), [1 / 3] * 3)


def test_alignment_and_distillation_sums_by_hand():
    pu = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    qu = torch.tensor([[1.0, 2.0], [0.0, 3.0]], requires_grad=True)
    align = alignment_sum(pu, qu)
    assert float(align.detach()) == ALIGN
    align.backward()
    assert qu.grad is None                                     # sg(Q u_S)
    assert pu.grad.tolist() == [[0.0, -4.0], [2.0, -4.0]]      # 2 (P u − Q u)
    weak = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    strong = S_SELF[:2].clone().requires_grad_()
    value = distillation_sum(weak, strong, 2.0)
    assert float(value.detach()) == pytest.approx(KL_TAU2, rel=1e-6)
    value.backward()
    assert strong.grad is None                                 # sg(p_S^τ)
    # ∂/∂z_W of KL(p_S^τ ‖ softmax(z_W/τ)) = (p_W^τ − p_S^τ) / τ
    expected = [(w - s) / 2 for w, s in zip(softmax([0.5, 0, 0]), softmax([1, 0, 0]))]
    assert weak.grad[0].tolist() == pytest.approx(expected, rel=1e-5)
    # the KL direction matters: KL(p_W ‖ p_S) differs
    assert KL_TAU2 != pytest.approx(kl(softmax([0.5, 0, 0]), softmax([1, 0, 0])) + kl([1 / 3] * 3, softmax([0, 0, 1])))


def _hand_setup(mu=0.5, nu=0.01, tau=2.0, weak=1):
    arm = arm_method(ARMHparams(proj_dim=2, mu=mu, nu=nu, tau=tau, aux_weight=2.0), embed_dim=3)
    model = arm.model
    with torch.no_grad():
        model.arm_projection["visual"].weight.copy_(P)
        model.arm_projection["audio"].weight.copy_(Q)
        model.arm_classifier["visual"].weight.copy_(G_WEIGHT)
        model.arm_classifier["visual"].bias.copy_(G_BIAS)
    g = torch.Generator().manual_seed(0)
    routed, self_v = (torch.randn(3, NUM_CLASSES, generator=g) for _ in range(2))
    outputs = ModelOutputs(
        routed=routed, routed_valid=torch.tensor([True, True, True]),
        self_logits={"audio": S_SELF.clone().requires_grad_(), "visual": self_v.requires_grad_()},
        infiltration_logits={}, paths={}, valid={"fused": torch.tensor([True, True, False])},
        features={"audio": U_S.clone().requires_grad_(), "visual": U_W.clone().requires_grad_()})
    batch = Batch(inputs={}, present={}, labels=LABELS, indices=torch.arange(3))
    ctx = arm.prepare_round(model, {}, None, np.arange(3), client(range(3)), 1, broadcast={"weak": torch.tensor(weak)})
    return arm, model, outputs, batch, ctx


def test_loss_by_hand_and_its_stop_gradients():
    arm, model, outputs, batch, ctx = _hand_setup()
    assert (ctx.weak, ctx.strong) == ("visual", "audio")
    shared = FedAvg.local_loss(arm, model, outputs, batch, ctx)
    loss = arm.local_loss(model, outputs, batch, ctx)
    # n_B = 3 (every row has a modality); μ = 0.5, τ = 2, ν = 0.01, ‖PPᵀ − I‖² = 19
    expected = (CE_P + 0.5 * (ALIGN + 4 * KL_TAU2)) / 3 + 0.01 * 19
    assert float((loss - shared).detach()) == pytest.approx(expected, rel=1e-6)
    assert ctx.pairs == 2 and float(ctx.align) == ALIGN and float(ctx.kl) == pytest.approx(KL_TAU2, rel=1e-6)

    extra = arm.arm_loss(model, outputs, batch, ctx)
    extra.backward()
    assert outputs.features["audio"].grad is None             # no gradient into S through ‖P u_W − sg(Q u_S)‖²
    assert outputs.self_logits["audio"].grad is None          # nor through sg(p_S^τ)
    assert model.arm_projection["audio"].weight.grad is None  # Q is not trained
    assert all(p.grad is None for p in model.arm_classifier["audio"].parameters())
    grad_w = outputs.features["visual"].grad
    assert grad_w[:2].abs().sum() > 0 and torch.equal(grad_w[2], torch.zeros(3))   # row 2 has no W
    assert model.arm_projection["visual"].weight.grad.abs().sum() > 0
    assert model.arm_classifier["visual"].weight.grad.abs().sum() > 0


def test_loss_with_the_roles_swapped_uses_the_other_modules():
    # W = audio: P = audio's projection (Q above), Q = visual's (P above)
    arm, model, outputs, batch, ctx = _hand_setup(nu=0.0, weak=0)
    assert (ctx.weak, ctx.strong) == ("audio", "visual")
    extra = arm.arm_loss(model, outputs, batch, ctx)
    # P u_W = Q·u_S rows (1, 2), (0, 3); targets P·u_W rows (1, 0), (1, 1): the same distances, 9
    assert float(ctx.align) == ALIGN
    extra.backward()
    assert outputs.features["visual"].grad is None and outputs.self_logits["visual"].grad is None
    assert model.arm_projection["visual"].weight.grad is None


def test_no_multimodal_rows_or_warm_up_add_nothing():
    arm, model, outputs, batch, ctx = _hand_setup()
    outputs.valid["fused"] = torch.tensor([False, False, False])
    assert arm.arm_loss(model, outputs, batch, ctx) is None   # not even the orthonormality penalty
    arm, model, outputs, batch, _ = _hand_setup()
    warm = arm.prepare_round(model, {}, None, np.arange(3), client(range(3)), 0, broadcast={})
    assert warm.weak is None and arm.arm_loss(model, outputs, batch, warm) is None
    assert torch.equal(arm.local_loss(model, outputs, batch, warm), FedAvg.local_loss(arm, model, outputs, batch, warm))


# ------------------------------------------------------------------------------- server

def record(round_, audio, visual):
    return {"round": round_, "val": {"accuracy": {"fused": 0.9, "audio_self": audio, "visual_self": visual}}}


def test_weak_modality_is_decided_from_the_record_and_rechecked():
    arm = arm_method(ARMHparams(proj_dim=4, warmup_rounds=2))
    state = arm.init_server_state(4, NUM_CLASSES)
    assert arm.broadcast(state) == {}
    assert arm.server_metrics(state) == {"weak": None, "weak_switches": 0.0, "align": None, "kl": None}
    assert arm.observe_evaluation(state, record(1, 0.3, 0.6)) is state          # still warming up
    decided = arm.observe_evaluation(state, record(2, 0.7, 0.4))                  # end of warm-up: visual weaker
    assert int(state["weak"]) == -1                                               # input not modified
    assert int(decided["weak"]) == 1 and int(decided["switches"]) == 0
    assert int(arm.broadcast(decided)["weak"]) == 1
    assert arm.server_metrics(decided)["weak"] == 1.0
    tie = arm.observe_evaluation(decided, record(3, 0.5, 0.5))
    assert int(tie["weak"]) == 1                                                  # a tie keeps W
    no_val = arm.observe_evaluation(decided, {"round": 3, "val": None, "test": {"accuracy": {}}})
    assert int(no_val["weak"]) == 1
    missing = arm.observe_evaluation(decided, record(3, None, 0.1))
    assert int(missing["weak"]) == 1
    flipped = arm.observe_evaluation(tie, record(4, 0.2, 0.6))                    # re-checked: audio weaker now
    assert int(flipped["weak"]) == 0 and int(flipped["switches"]) == 1
    assert arm.server_metrics(flipped)["weak_switches"] == 1.0
    ctx = arm.prepare_round(arm.model, {}, None, np.arange(1), client([0]), 4, broadcast=arm.broadcast(flipped))
    assert (ctx.weak, ctx.strong) == ("audio", "visual")
    first_tie = arm.observe_evaluation(state, record(2, 0.5, 0.5))
    assert int(first_tie["weak"]) == 0                                            # undecided tie: the first


def test_server_update_averages_the_clients_terms_for_logging():
    arm = arm_method()
    start = arm.model_factory().state_dict()
    state = arm.init_server_state(3, NUM_CLASSES)
    moved = {k: v + 1 if v.is_floating_point() else v for k, v in start.items()}
    updates = [
        ClientUpdate(0, 10, moved, {"audio.encoder"}, {"loss": 1.0, "arm_pairs": 6, "arm_align": 2.0, "arm_kl": 0.5}),
        ClientUpdate(1, 4, start, {"audio.encoder"}, {"loss": 1.0, "arm_pairs": 2, "arm_align": 6.0, "arm_kl": 0.1}),
        ClientUpdate(2, 5, start, {"visual.encoder"}, {"loss": 1.0}),                # no multimodal rows
    ]
    new_global, new_state = arm.server_update(start, state, updates, 1)
    assert float(new_state["align"]) == pytest.approx((6 * 2.0 + 2 * 6.0) / 8)
    assert float(new_state["kl"]) == pytest.approx((6 * 0.5 + 2 * 0.1) / 8)
    assert int(new_state["weak"]) == -1
    assert_states_equal(new_global, average_groups(start, updates, arm.groups))
    _, none = arm.server_update(start, state, updates[2:], 1)
    assert arm.server_metrics(none)["align"] is None


# ------------------------------------------------------------------------------- network

def test_network_adds_projections_and_classifiers_to_the_modality_groups():
    hp = ARMHparams(proj_dim=4)
    net = ARM.network(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8), hp, seed=7)
    assert isinstance(net, ARMNet)
    base = build_model(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8), seed=7).state_dict()
    state = net.state_dict()
    assert_states_equal(state, base, keys=list(base))                       # same base weights as build_model
    assert sorted(k for k in state if k not in base) == sorted(
        f"arm_{part}.{m}.{p}" for m in ("audio", "visual")
        for part, p in (("projection", "weight"), ("classifier", "weight"), ("classifier", "bias")))
    for m in ("audio", "visual"):
        p = net.arm_projection[m].weight
        assert p.shape == (4, 8)
        assert torch.allclose(p @ p.T, torch.eye(4), atol=1e-6)              # orthonormal rows
        assert net.arm_classifier[m].weight.shape == (NUM_CLASSES, 4)
    assert not torch.equal(net.arm_projection["audio"].weight, net.arm_projection["visual"].weight)
    groups = net.parameter_groups()
    assert set(groups) == {"audio.encoder", "audio.classifier", "visual.encoder", "visual.classifier", "fusion"}
    for m in ("audio", "visual"):
        assert f"arm_projection.{m}.weight" in groups[f"{m}.encoder"]
        assert {f"arm_classifier.{m}.weight", f"arm_classifier.{m}.bias"} <= set(groups[f"{m}.classifier"])
    assert sorted(k for keys in groups.values() for k in keys) == sorted(state)   # each key exactly once
    again = ARM.network(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8), hp, seed=7).state_dict()
    assert_states_equal(state, again)


def test_network_and_method_reject_what_arm_cannot_do():
    with pytest.raises(CmiError, match="proj_dim"):
        ARM.network(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8), ARMHparams(proj_dim=9))
    with pytest.raises(CmiError, match="two modalities"):
        arm_method(specs=SPECS[:1])
    with pytest.raises(CmiError, match="own network"):
        ARM(lambda: build_model(SPECS, NUM_CLASSES, ModelConfig(embed_dim=8)), TrainConfig(), ARMHparams(proj_dim=4), CPU)


@pytest.mark.parametrize("kwargs, key", [
    ({"warmup_rounds": 0}, "warmup_rounds"), ({"proj_dim": 0}, "proj_dim"), ({"nu": -1.0}, "nu"),
    ({"mu": -0.1}, "mu"), ({"tau": 0.0}, "tau"), ({"aux_weight": -1.0}, "aux_weight"),
])
def test_invalid_hparams_are_user_errors(kwargs, key):
    with pytest.raises(CmiError, match=key):
        ARMHparams(**kwargs)


def test_defaults_are_the_spec_values():
    hp = ARMHparams()
    assert (hp.warmup_rounds, hp.proj_dim, hp.nu, hp.mu, hp.tau, hp.aux_weight) == (1, 64, 1e-3, 1.0, 2.0, 2.0)


# ------------------------------------------------------------------------------- client updates

POOL = make_pool(24, missing=0.3)


def test_warm_up_is_the_shared_objective_exactly():
    arm, fedavg = arm_method(), fedavg_method()
    start = arm.model_factory().state_dict()
    base_start = fedavg.model_factory().state_dict()
    assert_states_equal(base_start, start, keys=list(base_start))
    broadcast = arm.broadcast(arm.init_server_state(1, NUM_CLASSES))
    ours = arm.client_update(start, POOL, client(range(24)), 0, seed=3, broadcast=broadcast)
    theirs = fedavg.client_update(base_start, POOL, client(range(24)), 0, seed=3)
    assert_states_equal(ours.state, theirs.state, keys=list(base_start))
    assert_states_equal(ours.state, start, keys=[k for k in start if k.startswith(ARM_KEYS)])   # untouched
    assert ours.metrics == theirs.metrics and ours.trained_groups == theirs.trained_groups


def test_after_warm_up_p_and_its_classifier_train_and_q_stays():
    arm = arm_method()
    start = arm.model_factory().state_dict()
    multimodal = int((POOL.present["audio"] & POOL.present["visual"]).sum())
    for weak, strong in ((1, "audio"), (0, "visual")):
        w = ("audio", "visual")[weak]
        update = arm.client_update(start, POOL, client(range(24)), 1, seed=3, broadcast={"weak": torch.tensor(weak)})
        for part in ("arm_projection", "arm_classifier"):
            s_keys = [k for k in start if k.startswith(f"{part}.{strong}.")]
            w_keys = [k for k in start if k.startswith(f"{part}.{w}.")]
            assert_states_equal(update.state, start, keys=s_keys)                         # Q and G_S: no gradient
            assert all(not torch.equal(update.state[k], start[k]) for k in w_keys)       # P and G_W trained
        assert update.metrics["arm_pairs"] == multimodal                                  # one local epoch
        assert update.metrics["arm_align"] > 0 and update.metrics["arm_kl"] >= 0


def test_a_client_without_multimodal_rows_leaves_the_other_modality_alone():
    arm = arm_method()
    start = arm.model_factory().state_dict()
    update = arm.client_update(start, only(POOL, "audio"), client(range(24), ("audio",)), 1, seed=3,
                               broadcast={"weak": torch.tensor(1)})                      # W = visual, absent here
    assert update.trained_groups == {"audio.encoder", "fusion"}
    assert update.metrics["arm_pairs"] == 0 and update.metrics["arm_align"] is None


def test_client_update_is_deterministic():
    arm = arm_method()
    start = arm.model_factory().state_dict()
    run = lambda seed, broadcast: arm.client_update(start, POOL, client(range(24)), 1, seed=seed, broadcast=broadcast)
    active = {"weak": torch.tensor(1)}
    first, second = run(5, active), run(5, active)
    assert_states_equal(first.state, second.state)
    assert first.metrics == second.metrics
    other_seed = run(6, active).state
    assert any(not torch.equal(first.state[k], other_seed[k]) for k in start)
    warm = run(5, {}).state
    assert any(not torch.equal(first.state[k], warm[k]) for k in start if not k.startswith(ARM_KEYS))
