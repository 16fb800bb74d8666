"""AUG (shared/spec/methods.md): the boosting loss and its residual weight by hand, the α-weighted
prediction of the network, the server's learner growth (which modality, which rounds, how many),
learners that the server activates being trained by the next client update, the per-modality
passes, parameter groups and determinism."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.artifacts import eval_paths
from pipelines.errors import CmiError
from pipelines.fl import ClientUpdate, TrainConfig
from pipelines.fl.aug import (
    AUG, AUGBatch, AUGHparams, AUGNet, AUGOutputs, boosting_loss, learner_growth, residual_weight,
)
from pipelines.models import ModelConfig, build_model
from pipelines.training.evaluation import predict
from tests.fl.common import CPU, NUM_CLASSES, SPECS, assert_states_equal, client, make_pool, only

A, B = "audio", "visual"
CONFIG = ModelConfig(embed_dim=8)


def aug_method(hparams=AUGHparams(), train=TrainConfig(batch_size=8), cls=AUG, seed=0):
    return cls(lambda: AUG.network(SPECS, NUM_CLASSES, CONFIG, hparams, seed=seed), train, hparams, CPU)


def ce(logits, y):
    """Cross-entropy of one row of python floats."""
    return -logits[y] + math.log(sum(math.exp(v) for v in logits))


def softmax(logits, y):
    return math.exp(logits[y]) / sum(math.exp(v) for v in logits)


# ------------------------------------------------------------------------------ the loss by hand
Z1 = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]      # first learner's logits, two rows
Z2 = [[0.5, -0.5, 0.0], [1.0, 0.0, -1.0]]     # second learner's
Y = [0, 2]


def test_loss_with_one_learner_is_the_cross_entropy_of_its_logits():
    loss = boosting_loss(torch.tensor(Z1).unsqueeze(1), torch.tensor(Y), lam=0.5)
    # row 0: −1 + log(e + 1 + e⁻¹) = 0.4076; row 1: −0 + log(1 + e² + 1) = 2.2395
    expected = (ce(Z1[0], 0) + ce(Z1[1], 2)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((0.40761 + 2.23954) / 2, abs=1e-4)


def test_residual_weight_and_loss_with_two_learners_by_hand():
    z = torch.tensor([Z1, Z2]).transpose(0, 1).contiguous().requires_grad_()      # (2 rows, 2 learners, 3)
    y = torch.tensor(Y)
    lam = 0.5
    totals = [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(Z1, Z2)]          # Z^(2) = z^(1) + z^(2)
    # p = softmax(Z^(1))[y]: row 0 e/(e+1+e⁻¹) = 0.6652, row 1 1/(2+e²) = 0.1065
    p = [softmax(Z1[0], 0), softmax(Z1[1], 2)]
    assert p == pytest.approx([math.e / (math.e + 1 + 1 / math.e), 1 / (2 + math.e ** 2)])
    weights = [1 - lam * q for q in p]                                             # 0.6674, 0.9468
    assert residual_weight(torch.tensor(Z1), y, lam).tolist() == pytest.approx(weights, rel=1e-6)
    log_new = [Z2[0][0] - math.log(sum(math.exp(v) for v in Z2[0])),                # log softmax(z^(2))[y]
               Z2[1][2] - math.log(sum(math.exp(v) for v in Z2[1]))]
    expected = (sum(ce(t, c) for t, c in zip(totals, Y)) / 2 + sum(ce(r, c) for r, c in zip(Z1, Y)) / 2
                - sum(w * lg for w, lg in zip(weights, log_new)) / 2)
    loss = boosting_loss(z, y, lam)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)

    # sg(): the weight is a constant of the gradient. The same expression with the weights as
    # numbers has the same gradient; with the weight differentiated it would not.
    loss.backward()
    ref = z.detach().clone().requires_grad_()
    total, first, second = ref.sum(1), ref[:, 0], ref[:, 1]
    hand = (F.cross_entropy(total, y) + F.cross_entropy(first, y)
            - (torch.tensor(weights) * second.log_softmax(1)[torch.arange(2), y]).mean())
    hand.backward()
    assert torch.allclose(z.grad, ref.grad, atol=1e-6)
    live = ref.detach().clone().requires_grad_()
    undetached = (F.cross_entropy(live.sum(1), y) + F.cross_entropy(live[:, 0], y)
                  - ((1 - lam * live[:, 0].softmax(1)[torch.arange(2), y]) * live[:, 1].log_softmax(1)[torch.arange(2), y]).mean())
    undetached.backward()
    assert not torch.allclose(z.grad, live.grad, atol=1e-4)


def test_with_three_learners_the_previous_sum_holds_every_earlier_learner():
    g = torch.Generator().manual_seed(3)
    z = torch.randn((4, 3, NUM_CLASSES), generator=g)
    y = torch.tensor([0, 1, 2, 1])
    rows = torch.arange(4)
    previous = z[:, 0] + z[:, 1]                                                   # Z^(2)
    weight = 1 - 0.3 * previous.softmax(1)[rows, y]
    expected = (F.cross_entropy(z.sum(1), y) + F.cross_entropy(previous, y)
                - (weight * z[:, 2].log_softmax(1)[rows, y]).mean())
    assert float(boosting_loss(z, y, lam=0.3)) == pytest.approx(float(expected), rel=1e-6)
    assert float(boosting_loss(z, y, lam=0.0)) == pytest.approx(
        float(F.cross_entropy(z.sum(1), y) + F.cross_entropy(previous, y) + F.cross_entropy(z[:, 2], y)), rel=1e-6)


def test_local_loss_takes_the_rows_of_the_pass_modality_and_sums_confidences_of_multimodal_rows():
    aug = aug_method(AUGHparams(lam=0.5))
    ctx = aug.prepare_round(aug.model, {}, None, np.arange(3), client(range(3)), 0)
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn((3, 2, NUM_CLASSES), generator=g)
    z_a[2] = 0                                                                     # row 2 has no audio
    has = torch.tensor([True, True, False])
    labels = torch.tensor([2, 0, 1])
    outputs = AUGOutputs(routed=z_a.sum(1), routed_valid=has, self_logits={}, infiltration_logits={},
                         paths={}, valid={f"{A}_self": has}, learner_logits={A: z_a})
    batch = AUGBatch(inputs={}, present={A: has, B: torch.zeros(3, dtype=torch.bool)}, labels=labels,
                     indices=torch.arange(3), modality=A, complete=torch.tensor([True, False, False]))
    loss = aug.local_loss(aug.model, outputs, batch, ctx)
    rows = [[v.tolist() for v in z_a[i]] for i in (0, 1)]
    by_hand = 0.0
    for (first, second), y in zip(rows, (2, 0)):
        total = [p + q for p, q in zip(first, second)]
        w = 1 - 0.5 * softmax(first, y)
        by_hand += ce(total, y) + ce(first, y) + w * ce(second, y)
    assert float(loss) == pytest.approx(by_hand / 2, rel=1e-6)                     # mean over the 2 audio rows
    # s_audio: only row 0 had both modalities; s_visual untouched
    assert float(ctx.confidence[A]) == pytest.approx(softmax([p + q for p, q in zip(*rows[0])], 2), rel=1e-6)
    assert float(ctx.confidence[B]) == 0.0


# ------------------------------------------------------------------------------ the network
def test_prediction_is_alpha_weighted_sum_of_learner_ensembles_by_hand():
    hp = AUGHparams(alpha=0.4)
    net = AUG.network(SPECS, NUM_CLASSES, CONFIG, hp, seed=5)
    assert isinstance(net, AUGNet) and net.alpha == 0.4 and len(net.branches[A].learners) == 11
    state = net.state_dict()
    state["learners"] = torch.tensor([2, 3])              # the architecture travels in the weights
    net.load_state_dict(state)
    net.eval()
    pool = make_pool(16, seed=2, missing=0.5)
    both = pool.present[A] & pool.present[B]
    assert both.any() and (pool.present[A] & ~both).any() and (pool.present[B] & ~both).any()
    with torch.no_grad():
        out = net(pool.inputs, pool.present)
        totals = {}
        for m, n in ((A, 2), (B, 3)):
            rows = pool.present[m]
            branch = net.branches[m]
            u = branch.self_projector(branch.encoder(pool.inputs[m][rows]))
            assert torch.allclose(out.features[m][rows], u, atol=1e-6)
            z = [torch.relu(u @ branch.learners[j].weight.T + branch.learners[j].bias) @ net.head.weight.T
                 + net.head.bias for j in range(n)]
            assert out.learner_logits[m].shape == (16, n, NUM_CLASSES)
            assert torch.allclose(out.learner_logits[m][rows], torch.stack(z, 1), atol=1e-6)
            assert torch.equal(out.learner_logits[m][~rows], torch.zeros(int((~rows).sum()), n, NUM_CLASSES))
            totals[m] = torch.zeros(16, NUM_CLASSES)
            totals[m][rows] = sum(z)
    fused = 0.4 * totals[A] + 0.6 * totals[B]
    assert set(out.paths) == set(eval_paths([A, B]))
    assert torch.allclose(out.paths["fused"][both], fused[both], atol=1e-6)
    assert torch.equal(out.valid["fused"], both)
    for m in (A, B):
        for path in (f"{m}_only", f"{m}_self"):
            assert torch.equal(out.valid[path], pool.present[m])
            assert torch.allclose(out.paths[path][pool.present[m]], totals[m][pool.present[m]], atol=1e-6)
        assert torch.allclose(out.self_logits[m][pool.present[m]], totals[m][pool.present[m]], atol=1e-6)
        single = pool.present[m] & ~both
        assert torch.allclose(out.routed[single], totals[m][single], atol=1e-6)   # a one-modality row: its Z_m
    assert torch.allclose(out.routed[both], fused[both], atol=1e-6)
    assert torch.equal(out.routed_valid, pool.present[A] | pool.present[B])
    assert out.infiltration_logits == {}


def test_evaluation_predicts_from_the_network_outputs():
    net = AUG.network(SPECS, NUM_CLASSES, CONFIG, AUGHparams(), seed=1)
    pool = make_pool(20, seed=4, missing=0.4)
    paths = eval_paths([A, B])
    pred = predict(net, pool, paths, [A, B], batch_size=7)
    with torch.no_grad():
        out = net(pool.inputs, pool.present)
    for p in paths:
        expected = torch.where(out.valid[p], out.paths[p].argmax(1), -1).numpy()
        assert np.array_equal(pred.paths[p], expected), p
    assert np.array_equal(pred.routed, out.routed.argmax(1).numpy())
    both = (pool.present[A] & pool.present[B]).numpy()
    assert np.isfinite(pred.self_logits[both]).all() and np.isnan(pred.self_logits[~both]).all()


def test_parameter_groups_partition_the_state():
    aug = aug_method(AUGHparams(max_added=3))
    state = aug.model.state_dict()
    keys = [k for ks in aug.groups.values() for k in ks]
    assert sorted(keys) == sorted(state) and len(keys) == len(set(keys))
    assert set(aug.groups) == {f"{A}.encoder", f"{A}.classifier", f"{B}.encoder", f"{B}.classifier", "head",
                               "architecture"}
    assert aug.groups["architecture"] == ["learners"]
    assert state["learners"].dtype == torch.int64 and state["learners"].tolist() == [1, 1]
    assert sorted(aug.groups["head"]) == ["head.bias", "head.weight"]
    for m in (A, B):
        assert sorted(aug.groups[f"{m}.classifier"]) == sorted(
            f"branches.{m}.learners.{j}.{p}" for j in range(4) for p in ("weight", "bias"))  # 1 + max_added
        assert all(".learners." not in k for k in aug.groups[f"{m}.encoder"])
    assert not any("fusion" in k or "infiltration" in k or ".classifier." in k for k in state)


def test_network_needs_two_modalities_and_the_method_its_network():
    with pytest.raises(CmiError, match="two modalities"):
        AUG.network(SPECS[:1], NUM_CLASSES, CONFIG, AUGHparams())
    with pytest.raises(CmiError, match="AUGNet"):
        AUG(lambda: build_model(SPECS, NUM_CLASSES, CONFIG), TrainConfig(), AUGHparams(), CPU)


@pytest.mark.parametrize("kwargs, key", [({"lam": -0.1}, "lam"), ({"lam": 1.5}, "lam"), ({"tau": -1}, "tau"),
                                         ({"alpha": 1.2}, "alpha"), ({"max_added": -1}, "max_added"),
                                         ({"max_added": 1.5}, "max_added")])
def test_invalid_hparams_are_user_errors(kwargs, key):
    with pytest.raises(CmiError, match=f"aug.{key}"):
        AUGHparams(**kwargs)


def test_defaults():
    hp = AUGHparams()
    assert (hp.lam, hp.tau, hp.alpha, hp.max_added) == (0.5, 0.01, 0.4, 10)


# ------------------------------------------------------------------------------ the server
@pytest.mark.parametrize("counts, s_a, s_b, tau, expected", [
    ([1, 1], 1.2, 1.0, 0.01, [1, 2]),       # r = 1.2 > 1.01: B is weak
    ([1, 1], 1.0, 1.2, 0.01, [2, 1]),       # r = 0.83 < 0.99: A is weak
    ([1, 1], 1.005, 1.0, 0.01, [1, 1]),     # within τ
    ([1, 1], 1.005, 1.0, 0.001, [1, 2]),    # ... of a smaller τ no longer
    ([1, 1], 0.995, 1.0, 0.001, [2, 1]),
    ([3, 1], 2.0, 0.0, 0.01, [3, 2]),       # s_B = 0: r = ∞
    ([1, 1], 0.0, 0.0, 0.01, [1, 1]),       # no multimodal confidence: no decision
    ([6, 5], 0.1, 1.0, 0.01, [7, 5]),       # 9 added: one more
    ([7, 5], 0.1, 1.0, 0.01, [7, 5]),       # 10 added already
])
def test_learner_growth_rules(counts, s_a, s_b, tau, expected):
    assert learner_growth(counts, s_a, s_b, tau, 10) == expected


def _updates(start, confidences):
    """Updates that trained nothing (the averaging keeps ``start``) reporting these (s_A, s_B)."""
    return [ClientUpdate(cid=k, num_samples=5, state=start, trained_groups=set(),
                         metrics={"loss": 0.0, "confidence": {A: s_a, B: s_b}})
            for k, (s_a, s_b) in enumerate(confidences)]


# per client r = 0.2 and 1.5 (mean 0.85: A would be weak); summed 1.6 / 1.5 = 1.067 > 1.01: B is
B_WEAK = [(0.1, 0.5), (1.5, 1.0)]
A_WEAK = [(0.5, 0.1), (1.0, 1.5)]
BALANCED = [(0.6, 0.5), (0.405, 0.5)]     # 1.005 / 1.0


@pytest.mark.parametrize("confidences, expected", [(B_WEAK, [1, 2]), (A_WEAK, [2, 1]), (BALANCED, [1, 1])])
def test_server_adds_a_learner_to_the_weak_modality_on_check_rounds(confidences, expected):
    aug = aug_method()
    aug.total_rounds = 30                                  # interval ⌊30/10⌋ = 3: after rounds 3, 6, ...
    assert aug.check_interval == 3
    start = aug.model.state_dict()
    before = start["learners"].clone()
    server = aug.init_server_state(4, NUM_CLASSES)
    for round_idx in (0, 1, 3, 4):                         # rounds 1, 2, 4, 5: no check
        new, state = aug.server_update(start, server, _updates(start, confidences), round_idx)
        assert new["learners"].tolist() == [1, 1] and state["learners"].tolist() == [1, 1]
    new, state = aug.server_update(start, server, _updates(start, confidences), 2)   # round 3
    assert new["learners"].tolist() == expected and new["learners"].dtype == torch.int64
    assert state["learners"].tolist() == expected
    assert state["confidence"].tolist() == pytest.approx([sum(c[0] for c in confidences),
                                                          sum(c[1] for c in confidences)])
    assert torch.equal(start["learners"], before)          # the received global state is not modified
    metrics = aug.server_metrics(state)
    assert metrics[f"learners_{A}"] == expected[0] and metrics[f"learners_{B}"] == expected[1]
    assert metrics["confidence_ratio"] == pytest.approx(float(state["confidence"][0] / state["confidence"][1]))


@pytest.mark.parametrize("rounds, interval", [(1, 1), (5, 1), (19, 1), (25, 2), (100, 10)])
def test_check_interval(rounds, interval):
    aug = aug_method()
    aug.total_rounds = rounds
    assert aug.check_interval == interval


def test_never_more_than_max_added_learners():
    aug = aug_method(AUGHparams(max_added=2))
    aug.total_rounds = 10
    state = aug.model.state_dict()
    server = aug.init_server_state(2, NUM_CLASSES)
    seen = []
    for round_idx, confidences in enumerate([B_WEAK] * 4 + [A_WEAK] * 2):
        state, server = aug.server_update(state, server, _updates(state, confidences), round_idx)
        seen.append(state["learners"].tolist())
    assert seen == [[1, 2], [1, 3], [1, 3], [1, 3], [1, 3], [1, 3]]
    net = aug.model_factory()
    net.load_state_dict(state)                             # within the 1 + max_added preallocated slots
    assert len(net.branches[B].learners) == 3


# ------------------------------------------------------------------------------ clients
def _learner_keys(m, j):
    return [f"branches.{m}.learners.{j}.weight", f"branches.{m}.learners.{j}.bias"]


def _changed(s1, s2, keys):
    return any(not torch.equal(s1[k], s2[k]) for k in keys)


def test_a_learner_the_server_adds_is_trained_by_the_next_client_update():
    aug = aug_method()
    aug.total_rounds = 10
    pool = make_pool(24, missing=0.3)
    start = aug.model_factory().state_dict()
    first = aug.client_update(start, pool, client(range(24)), 0, seed=1)
    assert _changed(first.state, start, _learner_keys(A, 0)) and _changed(first.state, start, _learner_keys(B, 0))
    for m in (A, B):
        assert_states_equal(first.state, start, [k for j in range(1, 11) for k in _learner_keys(m, j)])
    reported = first.metrics["confidence"]
    assert set(reported) == {A, B} and all(v > 0 for v in reported.values())
    # the server finds A weak: its second learner becomes active in the new global state
    told = dataclasses.replace(first, metrics={**first.metrics, "confidence": {A: 1.0, B: 3.0}})
    new_global, _ = aug.server_update(start, aug.init_server_state(1, NUM_CLASSES), [told], 0)
    assert new_global["learners"].tolist() == [2, 1]
    assert_states_equal(new_global, first.state, _learner_keys(A, 1))      # still as initialised
    second = aug.client_update(new_global, pool, client(range(24)), 1, seed=2)
    assert _changed(second.state, new_global, _learner_keys(A, 1))         # trained now
    assert _changed(second.state, new_global, _learner_keys(A, 0))
    assert _changed(second.state, new_global, ["head.weight"])
    assert_states_equal(second.state, new_global,
                        [k for j in range(2, 11) for k in _learner_keys(A, j)]
                        + [k for j in range(1, 11) for k in _learner_keys(B, j)] + ["learners"])
    assert "architecture" not in second.trained_groups
    assert second.trained_groups == {f"{A}.encoder", f"{A}.classifier", f"{B}.encoder", f"{B}.classifier", "head"}


class _Recording(AUG):
    """AUG that records, after each backward, the pass's modality, presence and the groups with a gradient."""

    def after_backward(self, model, outputs, batch, ctx, step, generator):
        groups = {self.param_groups[n] for n, p in model.named_parameters() if p.grad is not None}
        self.log.append((batch.modality, {m: bool(p.any()) for m, p in batch.present.items()}, groups))


def test_each_batch_steps_once_for_a_then_once_for_b():
    aug = aug_method(cls=_Recording)
    aug.log = []
    aug.client_update(aug.model_factory().state_dict(), make_pool(16, missing=0.3), client(range(16)), 0, seed=0)
    assert [m for m, _, _ in aug.log] == [A, B, A, B]                      # 2 batches of 8
    for m, present, groups in aug.log:
        other = B if m == A else A
        assert present == {m: True, other: False}
        assert groups == {f"{m}.encoder", f"{m}.classifier", "head"}      # the other encoder did not run
    aug.log = []
    aug.client_update(aug.model_factory().state_dict(), only(make_pool(16), A), client(range(16)), 0, seed=0)
    assert [m for m, _, _ in aug.log] == [A, A]                            # no visual rows: no visual pass


def test_client_update_is_deterministic_given_the_seeds():
    pool = make_pool(24, missing=0.3)
    start = AUG.network(SPECS, NUM_CLASSES, CONFIG, AUGHparams(), seed=7).state_dict()
    assert_states_equal(start, AUG.network(SPECS, NUM_CLASSES, CONFIG, AUGHparams(), seed=7).state_dict())
    other_init = AUG.network(SPECS, NUM_CLASSES, CONFIG, AUGHparams(), seed=8).state_dict()
    assert _changed(start, other_init, _learner_keys(B, 10))               # every slot from the seeded generator
    assert not torch.equal(start["branches.audio.learners.1.weight"], start["branches.audio.learners.2.weight"])
    start["learners"] = torch.tensor([2, 3])
    run = lambda seed: aug_method().client_update(start, pool, client(range(24)), 0, seed=seed)
    one, again, other = run(3), run(3), run(4)
    assert_states_equal(one.state, again.state)
    assert one.metrics == again.metrics
    assert _changed(one.state, other.state, list(one.state))
