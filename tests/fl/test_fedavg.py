import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.fl import FedAvg, RoundContext, TrainConfig
from pipelines.fl.base import Batch, MomentumSGD
from pipelines.models import ModelOutputs
from tests.fl.common import (NUM_CLASSES, assert_states_equal, client, initial_state, make_pool, method)


def test_batches_cover_every_index_once_in_a_seeded_order():
    pool = make_pool(20)
    idx = np.arange(3, 20)
    order = lambda seed: torch.cat([b.indices for b in pool.batches(idx, 5, torch.Generator().manual_seed(seed))])
    first = order(0)
    assert sorted(first.tolist()) == idx.tolist()
    assert torch.equal(first, order(0)) and not torch.equal(first, order(1))
    batches = list(pool.batches(idx, 5, None, shuffle=False))
    assert [b.labels.shape[0] for b in batches] == [5, 5, 5, 2]
    b = batches[0]
    assert b.indices.tolist() == [3, 4, 5, 6, 7]
    assert torch.equal(b.inputs["visual"], pool.inputs["visual"][3:8]) and b.inputs["visual"].dtype == torch.uint8
    assert torch.equal(b.labels, pool.labels[3:8]) and torch.equal(b.present["audio"], pool.present["audio"][3:8])


def test_momentum_sgd_equals_torch_optim_sgd_also_when_a_parameter_skips_steps():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    train = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3)
    mine = MomentumSGD(ours, train)
    reference = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=1e-3)
    for step in range(5):
        mine.zero_grad()
        reference.zero_grad(set_to_none=True)
        grads = [torch.randn(4, 3), torch.randn(3) if step != 2 else None]   # step 2: no gradient, no update
        for p, q, g in zip(ours, theirs, grads):
            if g is not None:
                p.grad, q.grad = g.clone(), g.clone()
        before = ours[1].detach().clone()
        mine.step()
        reference.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
        if step == 2:
            assert torch.equal(ours[1], before)
    # the momentum kept through the skipped step is torch's
    assert mine.momentum[1] is not None and torch.equal(mine.momentum[1], reference.state[theirs[1]]["momentum_buffer"])


def test_mixed_batch_objective_by_hand():
    fedavg = method(FedAvg)                       # λ1 = 2
    model = fedavg.model_factory()
    # rows: both modalities, audio only, visual only; every logit 0, so each CE is ln(3)
    zeros = torch.zeros(3, NUM_CLASSES)
    a, v = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    outputs = ModelOutputs(routed=zeros, routed_valid=a | v, self_logits={"audio": zeros, "visual": zeros},
                           infiltration_logits={}, paths={}, valid={"fused": a & v})
    batch = Batch(inputs={}, present={"audio": a, "visual": v}, labels=torch.tensor([0, 1, 2]), indices=torch.arange(3))
    loss = fedavg.local_loss(model, outputs, batch, RoundContext(client=client([0]), round_idx=0))
    # (3 routed CEs + λ1 * 2 self CEs on the multimodal row) / 3 rows = (3 + 4) ln 3 / 3
    assert float(loss) == pytest.approx(7 * math.log(3) / 3, rel=1e-6)


def test_one_client_one_epoch_equals_centralized_sgd_on_the_same_batches():
    train = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, local_epochs=1, batch_size=8)
    fedavg = method(FedAvg, train=train)
    start = initial_state(fedavg)
    pool = make_pool(30)                           # every row multimodal
    update = fedavg.client_update(start, pool, client(range(30)), round_idx=0, seed=11)
    new_global = fedavg.aggregate(start, [update])

    model = fedavg.model_factory()
    model.load_state_dict(start)
    model.train()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(11))
    for rows in order.split(8):
        out = model({m: x[rows] for m, x in pool.inputs.items()}, {m: p[rows] for m, p in pool.present.items()})
        y = pool.labels[rows]
        loss = F.cross_entropy(out.paths["fused"], y) + 2.0 * (F.cross_entropy(out.self_logits["audio"], y)
                                                                + F.cross_entropy(out.self_logits["visual"], y))
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    expected = model.state_dict()
    assert update.num_samples == 30
    for key, value in expected.items():
        assert torch.allclose(new_global[key].double(), value.double(), rtol=1e-5, atol=1e-6), key


def test_same_seed_same_update_and_a_multimodal_client_trains_every_group():
    fedavg = method(FedAvg, train=TrainConfig(batch_size=8, local_epochs=2))
    start = initial_state(fedavg)
    pool = make_pool(32, missing=0.4)
    first, again, other = (fedavg.client_update(start, pool, client(range(32)), 0, seed=s) for s in (5, 5, 6))
    assert_states_equal(first.state, again.state)
    assert first.metrics == again.metrics
    assert not torch.equal(first.state["fusion.out.weight"], other.state["fusion.out.weight"])
    assert first.trained_groups == set(fedavg.groups)
    assert math.isfinite(first.metrics["loss"]) and first.metrics["loss"] > 0


def test_training_stops_at_the_first_non_finite_loss():
    fedavg = method(FedAvg)
    start = initial_state(fedavg)
    pool = make_pool(16)
    pool.inputs["audio"][:] = float("nan")
    update = fedavg.client_update(start, pool, client(range(16)), 0, seed=0)
    assert not math.isfinite(update.metrics["loss"])
    params = [name for name, _ in fedavg.model_factory().named_parameters()]
    assert_states_equal(update.state, start, params)      # no step was taken
    assert update.trained_groups == set()


def test_a_client_without_usable_rows_trains_nothing():
    fedavg = method(FedAvg)
    start = initial_state(fedavg)
    pool = make_pool(16)
    for p in pool.present.values():
        p[:8] = False
    update = fedavg.client_update(start, pool, client(range(8)), 0, seed=0)
    assert update.num_samples == 0 and update.trained_groups == set() and update.state is start
    assert update.metrics == {"loss": 0.0}
