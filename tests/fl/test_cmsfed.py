"""CMSFed / BMSFed (shared/spec/methods.md): the facility-location selection and the weak-only
choice by hand, prototype aggregation with missing classes, the prototype loss, what a client
reports and what the server keeps."""

import math

import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import CMSFed, CMSFedHparams, ClientTask, FedAvg, RoundContext
from pipelines.fl.cmsfed import aggregate_prototypes, facility_location_selection, global_imbalance
from tests.fl.common import client, initial_state, make_pool, method

# a small symmetric distance matrix without ties (worked below)
D = np.array([[0.0, 2.0, 6.0, 0.5],
              [2.0, 0.0, 5.0, 7.0],
              [6.0, 5.0, 0.0, 3.0],
              [0.5, 7.0, 3.0, 0.0]])


def objective(dist, picked):
    return dist[:, picked].min(axis=1).sum()


def test_greedy_facility_location_by_hand():
    # count = N: every draw holds all unpicked clients, so the greedy order is fixed.
    # pick 1: column sums 8.5, 14, 14, 10.5 -> client 0; then min(D[:,0], D[:,c]) sums:
    # c1 5.5, c2 2.5, c3 5 -> client 2; then c1 0.5, c3 2 -> client 1; then 3.
    picks = facility_location_selection(D, 4, np.random.default_rng(0))
    assert picks == [(0, False), (2, False), (1, False), (3, False)]
    assert objective(D, [0]) == 8.5 and objective(D, [0, 2]) == 2.5 and objective(D, [0, 2, 1]) == 0.5


class RecordingRng:
    """A numpy Generator that records the candidates it draws."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), []

    def choice(self, *args, **kwargs):
        out = self.rng.choice(*args, **kwargs)
        self.draws.append(out)
        return out


def test_stochastic_greedy_takes_the_best_of_its_drawn_candidates():
    points = np.random.default_rng(1).normal(size=(40, 3))
    dist = np.linalg.norm(points[:, None] - points[None], axis=2)
    rng = RecordingRng(5)
    picks = [cid for cid, _ in facility_location_selection(dist, 6, rng)]
    assert len(set(picks)) == 6
    assert all(len(draw) == max(6, 4) for draw in rng.draws)   # max(K, ⌊0.1·N⌋) candidates
    for k, (draw, pick) in enumerate(zip(rng.draws, picks)):
        assert pick in draw and not set(draw) & set(picks[:k])   # drawn from the unpicked
        best = min(draw, key=lambda c: objective(dist, picks[:k] + [c]))
        assert pick == best
    # same seed, same picks
    assert facility_location_selection(dist, 6, np.random.default_rng(5)) == \
        facility_location_selection(dist, 6, np.random.default_rng(5))


def test_the_weak_only_pick_needs_the_clients_own_imbalance_past_theta():
    # weak_ok only for client 3. Pick 1: best under weak_dist (= D) is 0, not ok -> multimodal 0.
    # Pick 2: weak minima still empty: column sums of {1, 2, 3}: 14, 14, 10.5 -> 3, ok -> weak-only 3.
    # Pick 3: weak: min(D[:,3], D[:,c]): c1 3.5, c2 5.5 -> 1, not ok -> multimodal: c1 5.5, c2 2.5 -> 2.
    picks = facility_location_selection(D, 4, np.random.default_rng(0), weak_dist=D,
                                        weak_ok=np.array([False, False, False, True]))
    assert picks == [(0, False), (3, True), (2, False), (1, False)]


def test_global_imbalance_is_the_sample_weighted_mean_of_known_ratios():
    rho = np.array([2.0, 0.5, np.nan, 4.0])
    samples = np.array([10.0, 30.0, 5.0, 0.0])
    assert global_imbalance(rho, samples) == pytest.approx((10 * 2 + 30 * 0.5) / 40)
    assert global_imbalance(np.full(3, np.nan), np.ones(3)) is None


def server_state_with(cms: CMSFed, rho, dist=D):
    state = cms.init_server_state(len(rho), 3)
    state["rho"] = torch.tensor(rho, dtype=torch.float64)
    state["samples"] = torch.ones(len(rho), dtype=torch.float64)
    state["dist"] = torch.tensor(np.stack([dist, dist, dist]), dtype=torch.float32)
    return state


def test_plan_round_zero_trains_every_client_one_epoch():
    cms = method(CMSFed)
    clients = [client([i], cid=i) for i in range(5)]
    plan = cms.plan_round(0, clients, 2, seed=0, server_state=cms.init_server_state(5, 3))
    assert plan == [ClientTask(i, None, 1) for i in range(5)]


@pytest.mark.parametrize("rho, theta, weak", [
    ([3.0, 1.2, 1.0, 1.6], 1.5, {0: ("visual",)}),       # ρ̄ = 1.7 > 1: visual is weak; ρ_k > 1.5: clients 0, 3
    ([3.0, 1.2, 1.0, 1.6], 5.0, {}),                     # nobody leans that far
    ([0.2, 1.0, 1.0, 0.9], 1.5, {0: ("audio",)}),        # ρ̄ < 1: audio is weak; ρ_k < 1/1.5: client 0
])
def test_plan_round_chooses_weak_only_clients_against_theta(rho, theta, weak):
    # clients_per_round = 4 = N: deterministic. With ok = {0, 3} (first case): pick 1 is client 0
    # under the weak matrix, ok -> weak-only; the rest follow as multimodal picks.
    cms = method(CMSFed, CMSFedHparams(theta=theta))
    plan = cms.plan_round(3, [client([i], cid=i) for i in range(4)], 4, seed=0, server_state=server_state_with(cms, rho))
    assert [t.cid for t in plan] == [0, 1, 2, 3]
    assert {t.cid: t.modalities for t in plan if t.modalities is not None} == weak


def test_prototype_aggregation_weights_by_counts_and_keeps_missing_classes():
    previous = torch.tensor([[[9.0, 9.0], [9.0, 9.0], [7.0, 7.0]]])      # one modality, 3 classes, d = 2
    known = torch.tensor([[False, False, True]])
    local = [torch.tensor([[[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]]), torch.tensor([[[3.0, 3.0], [0.0, 0.0], [0.0, 0.0]]])]
    counts = [torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0]])]
    protos, now_known = aggregate_prototypes(previous, known, local, counts)
    assert torch.equal(protos, torch.tensor([[[2.0, 2.0], [2.0, 2.0], [7.0, 7.0]]]))   # (2·1 + 2·3) / 4, 2, kept
    assert now_known.tolist() == [[True, True, True]]


def test_prototype_loss_by_hand():
    cms = method(CMSFed, CMSFedHparams(aux_weight=0.0, proto_weight=2.0))
    fedavg = method(FedAvg, cms.Hparams(aux_weight=0.0))
    pool = make_pool(n=12, seed=4, missing=0.4)
    model = cms.model
    model.load_state_dict(initial_state(cms))
    batch = next(pool.batches(np.arange(12), 12, None, shuffle=False))
    outputs = model(batch.inputs, batch.present)
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn((2, 3, 8), generator=g)
    known = torch.tensor([[True, True, True], [True, True, False]])   # visual has no prototype of class 2
    ctx = RoundContext(client=client(range(12)), round_idx=1, broadcast={"prototypes": prototypes, "known": known})
    loss = cms.local_loss(model, outputs, batch, ctx)

    y = batch.labels

    def proto_logits(u, k):
        s = -((u[:, None, :] - prototypes[k][None]) ** 2).sum(-1).sqrt()
        return s.masked_fill(~known[k], -math.inf)

    def ce(s, labels):   # per-row cross-entropy
        return -s.log_softmax(1)[torch.arange(len(labels)), labels]

    both = batch.present["audio"] & batch.present["visual"]
    s_a, s_v = proto_logits(outputs.features["audio"][both], 0), proto_logits(outputs.features["visual"][both], 1)
    p_a = s_a.softmax(1)[torch.arange(int(both.sum())), y[both]].sum()
    p_v = s_v.softmax(1)[torch.arange(int(both.sum())), y[both]].sum()
    weak_k, weak_s = (1, s_v) if p_a / p_v > 1 else (0, s_a)
    keep = known[weak_k][y[both]]
    expected = ce(weak_s[keep], y[both][keep]).sum()
    for k, m in enumerate(("audio", "visual")):
        single = batch.present[m] & ~both
        s = proto_logits(outputs.features[m][single], k)
        keep = known[k][y[single]]
        expected = expected + ce(s[keep], y[single][keep]).sum()
    base = fedavg.local_loss(model, outputs, batch, ctx)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(base.item() + 2.0 * expected.item() / 12, rel=1e-5)
    # without prototypes (round 0) the objective is FedAvg's
    assert cms.local_loss(model, outputs, batch, RoundContext(client=client(range(12)), round_idx=0)).item() == \
        pytest.approx(base.item(), rel=1e-6)


def test_a_weak_only_client_trains_its_weak_encoder_and_the_fusion_with_a_zeroed_slot():
    cms = method(CMSFed)
    pool = make_pool(n=24, seed=2)
    start = initial_state(cms)
    update = cms.client_update(start, pool, client(range(24)), 1, seed=3, task=ClientTask(0, ("visual",)))
    assert update.trained_groups == {"visual.encoder", "fusion"}
    assert all(torch.equal(update.state[k], start[k]) for k in start if k.startswith("branches.audio."))
    # the zero slot: the model fills the missing modality's fusion input with zeros, not I_m h_m
    model = cms.model
    model.load_state_dict(start)
    present = {"audio": torch.zeros(24, dtype=torch.bool), "visual": torch.ones(24, dtype=torch.bool)}
    out = model(pool.inputs, present)
    zeros = torch.zeros_like(out.features["visual"])
    assert torch.allclose(out.paths["visual_only"], model.fusion(zeros, out.features["visual"]), atol=1e-6)


def test_a_client_reports_prototypes_counts_and_its_imbalance():
    cms = method(CMSFed)
    pool = make_pool(n=30, seed=6, missing=0.3)
    update = cms.client_update(initial_state(cms), pool, client(range(30)), 0, seed=1)
    model = cms.model   # holds the trained state
    assert all(torch.equal(model.state_dict()[k], v) for k, v in update.state.items())
    model.eval()
    with torch.no_grad():
        out = model(pool.inputs, pool.present)
    y = pool.labels
    accuracy = {}
    for k, m in enumerate(("audio", "visual")):
        has = pool.present[m]
        counts = torch.bincount(y[has], minlength=3).float()
        means = torch.stack([out.features[m][has & (y == c)].mean(0) for c in range(3)])
        assert torch.equal(update.payload["prototype_counts"][k], counts)
        assert torch.allclose(update.payload["prototypes"][k], means, atol=1e-5)
        both = pool.present["audio"] & pool.present["visual"]
        nearest = torch.cdist(out.features[m][both], means).argmin(1)
        accuracy[m] = (nearest == y[both]).float().mean().item()
    assert update.payload["class_counts"].tolist() == torch.bincount(y, minlength=3).float().tolist()
    assert update.metrics["rho"] == pytest.approx((accuracy["audio"] + 1e-6) / (accuracy["visual"] + 1e-6), rel=1e-5)


def test_the_server_keeps_sketches_distances_imbalances_and_prototypes():
    cms = method(CMSFed, CMSFedHparams(sketch_dim=64))
    pool = make_pool(n=36, seed=7)
    start = initial_state(cms)
    clients = [client(range(12 * i, 12 * i + 12), cid=i) for i in range(3)]
    updates = [cms.client_update(start, pool, c, 0, seed=c.cid) for c in clients]
    state0 = cms.init_server_state(3, 3)
    new_global, state = cms.server_update(start, state0, updates, 0)
    assert torch.isnan(state0["rho"]).all()   # the input is not modified
    for k in range(3):
        sk = state["sketch"][:, k].double()
        assert torch.allclose(state["dist"][k], torch.cdist(sk, sk).float())
    assert torch.equal(state["sketch"][:, 0], state["sketch"][:, 1] + state["sketch"][:, 2])
    # the sketch is linear and unbiased in expectation; here: a client's delta sketched by hand
    delta_norm = sum(((updates[0].state[k] - start[k]) ** 2).sum() for k, g in cms.param_groups.items()
                     if g.endswith(".encoder") and k in dict(cms.model.named_parameters()))
    assert 0.2 < float((state["sketch"][0, 0] ** 2).sum() / delta_norm) < 5   # same order of magnitude
    assert state["rho"].tolist() == pytest.approx([u.metrics["rho"] for u in updates])
    assert state["samples"].tolist() == [12.0, 12.0, 12.0]
    assert state["known"].all()
    counts = torch.stack([u.payload["prototype_counts"] for u in updates]).double()
    protos = torch.stack([u.payload["prototypes"] for u in updates]).double()
    expected = (protos * counts.unsqueeze(-1)).sum(0) / counts.sum(0).unsqueeze(-1)
    assert torch.allclose(state["prototypes"].double(), expected, atol=1e-6)
    assert cms.server_metrics(state)["global_imbalance"] == pytest.approx(float(np.mean(state["rho"].numpy())))
    assert cms.broadcast(state)["prototypes"] is state["prototypes"]
    assert cms.broadcast(state0) == {}


def test_bad_hyperparameters_are_refused():
    with pytest.raises(CmiError, match="theta"):
        CMSFedHparams(theta=0.5)
