import math

import numpy as np
import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import ClientUpdate, FedAvg, FedAvgHparams, TrainConfig
from pipelines.fl.remix import Remix, RemixBatch, RemixHparams, assign_to_first, kl_to_uniform
from pipelines.models import build_model, ModelConfig
from tests.fl.common import CPU, NUM_CLASSES, SPECS, assert_states_equal, client, initial_state, make_pool, method

A, V = "audio", "visual"


def test_kl_assignment_by_hand():
    ln3 = math.log(3)
    logits_a = torch.tensor([[0.0, 0.0, 0.0], [ln3, 0.0, 0.0], [ln3, 0.0, 0.0], [5.0, 0.0, 0.0]])
    logits_v = torch.tensor([[ln3, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, ln3, 0.0], [0.0, 0.0, ln3]])
    # p = (3/5, 1/5, 1/5): KL = 3/5·ln(3·3/5) + 2·1/5·ln(3·1/5); uniform: 0; p = (e⁵, 1, 1)/(e⁵ + 2)
    kl_mid = 0.6 * math.log(1.8) + 0.4 * math.log(0.6)
    z = math.exp(5) + 2
    kl_sharp = math.exp(5) / z * math.log(3 * math.exp(5) / z) + 2 / z * math.log(3 / z)
    assert kl_to_uniform(logits_a).tolist() == pytest.approx([0.0, kl_mid, kl_mid, kl_sharp], abs=1e-6)
    assert kl_to_uniform(logits_v).tolist() == pytest.approx([kl_mid, 0.0, kl_mid, kl_mid], abs=1e-6)
    # row 0: A less confident -> A; row 1: V less confident -> V; row 2: a tie -> V; row 3: V -> V
    assert assign_to_first(logits_a, logits_v).tolist() == [True, False, False, False]


def _mixed_start(remix, factor=2.6):
    """The initial state with the audio classifier scaled so that the two self classifiers are
    about as confident: the assignment splits (at init, audio is the less confident everywhere)."""
    state = initial_state(remix)
    for key in ("branches.audio.classifier.weight", "branches.audio.classifier.bias"):
        state[key] = state[key] * factor
    return state


def _hand_assignment(remix, state, pool):
    """m -> set of pool rows assigned to m, from a fresh model with ``state`` in eval mode."""
    model = remix.model_factory()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model(pool.inputs, pool.present)
    p = {m: out.self_logits[m].softmax(1) for m in (A, V)}
    kl = {m: (p[m] * (p[m] * NUM_CLASSES).log()).sum(1) for m in (A, V)}
    both = pool.present[A] & pool.present[V]
    to_a = both & (kl[A] < kl[V])
    return {A: set(torch.nonzero(to_a).flatten().tolist()), V: set(torch.nonzero(both & ~to_a).flatten().tolist())}


def _epoch(remix, state, pool, rows, round_idx=1, seed=0):
    model = remix.model
    model.load_state_dict(state)
    model.train()
    ctx = remix.prepare_round(model, state, pool, rows, client(rows), round_idx)
    batches = list(remix.epoch_batches(model, pool, rows, torch.Generator().manual_seed(seed), ctx, 0))
    return batches, ctx


def test_batches_are_modality_pure_and_cover_every_sample_once_per_epoch():
    remix = method(Remix)                     # batch size 8; total_rounds 1 -> warm-up = round 0 only
    pool = make_pool(48, missing=0.3)
    rows = np.arange(48)
    state = _mixed_start(remix)
    batches, ctx = _epoch(remix, state, pool, rows)
    assert remix.model.training                                     # scored in eval mode, then back
    expected = _hand_assignment(remix, state, pool)
    both = pool.present[A] & pool.present[V]
    assert len(expected[A]) > 3 and len(expected[V]) > 3            # a real split
    seen = {A: [], V: []}
    order = []
    for batch in batches:
        assert isinstance(batch, RemixBatch)
        m = batch.modality
        other = V if m == A else A
        assert batch.present[m].all() and not batch.present[other].any()      # modality-pure
        assert torch.equal(batch.inputs[m], pool.inputs[m][batch.indices])
        assert torch.equal(batch.labels, pool.labels[batch.indices])
        assert torch.equal(batch.remixed, both[batch.indices])                 # pool-multimodal rows
        assert all(bool(pool.present[m][i]) for i in batch.indices)
        seen[m].extend(batch.indices.tolist())
        order.append(m)
    # all visual (B) batches first, then all audio (A) batches; full batches but each phase's last
    assert order == sorted(order, key=lambda m: m == A) and order[0] == V and order[-1] == A
    for m in (A, V):
        sizes = [len(b.indices) for b in batches if b.modality == m]
        assert all(s == 8 for s in sizes[:-1]) and sizes[-1] == len(seen[m]) - 8 * (len(sizes) - 1)
    # every row exactly once; multimodal rows in their assigned phase, single-modality rows in theirs
    assert sorted(seen[A] + seen[V]) == list(range(48))
    assert {i for i in seen[A] if both[i]} == expected[A]
    assert {i for i in seen[V] if both[i]} == expected[V]
    assert {i for i in seen[A] if not both[i]} == set(torch.nonzero(pool.present[A] & ~both).flatten().tolist())
    n = int(both.sum())
    assert ctx.scored == [n]
    assert ctx.shares == [[len(expected[A]) / n, len(expected[V]) / n]]


def test_batch_order_follows_the_epoch_generator():
    remix = method(Remix)
    pool = make_pool(48, missing=0.3)
    state = _mixed_start(remix)
    first, _ = _epoch(remix, state, pool, np.arange(48), seed=5)
    again, _ = _epoch(remix, state, pool, np.arange(48), seed=5)
    other, _ = _epoch(remix, state, pool, np.arange(48), seed=6)
    indices = lambda batches: [b.indices.tolist() for b in batches]
    assert indices(first) == indices(again)
    assert indices(first) != indices(other)
    assert sorted(sum(indices(first), [])) == sorted(sum(indices(other), []))     # same rows, other order


def test_the_zeroed_modality_encoder_does_not_run_nor_get_a_gradient():
    remix = method(Remix)
    pool = make_pool(48, missing=0.3)
    batches, ctx = _epoch(remix, _mixed_start(remix), pool, np.arange(48))
    model = remix.model
    calls = {A: 0, V: 0}
    hooks = [model.branches[m].encoder.register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
             for m in (A, V)]
    try:
        for m, other in ((V, A), (A, V)):
            batch = next(b for b in batches if b.modality == m and bool(b.remixed.any()))
            calls.update({A: 0, V: 0})
            model.zero_grad(set_to_none=True)
            outputs = model(batch.inputs, batch.present)
            remix.local_loss(model, outputs, batch, ctx).backward()
            assert calls == {m: 1, other: 0}
            for name, p in model.named_parameters():
                if name.startswith(f"branches.{other}."):
                    assert p.grad is None, name
            assert model.branches[m].encoder.parameters().__next__().grad is not None
            assert model.branches[m].classifier.weight.grad is not None      # γ·CE(z_m) on remixed rows
            assert model.fusion.out.weight.grad is not None
    finally:
        for h in hooks:
            h.remove()


def _ce(logits, labels):
    """Per-row cross-entropy by hand."""
    return -(logits - logits.exp().sum(1, keepdim=True).log())[torch.arange(len(labels)), labels]


def test_remixed_loss_by_hand():
    remix = method(Remix, RemixHparams(gamma=0.7))
    pool = make_pool(48, missing=0.3)
    batches, ctx = _epoch(remix, _mixed_start(remix), pool, np.arange(48))
    model = remix.model
    batch = next(b for b in batches if b.modality == V and 0 < int(b.remixed.sum()) < len(b.indices))
    outputs = model(batch.inputs, batch.present)
    u = outputs.features[V].detach()
    fused = model.fusion.out.weight.detach()[:, 8:] @ u.T + model.fusion.out.bias.detach()[:, None]   # F(0, u_V)
    assert torch.allclose(outputs.routed.detach(), fused.T, atol=1e-6)
    w, b = model.branches[V].classifier.weight.detach(), model.branches[V].classifier.bias.detach()
    y = batch.labels
    expected = (_ce(fused.T, y).sum() + 0.7 * _ce(u @ w.T + b, y)[batch.remixed].sum()) / len(y)
    assert remix.local_loss(model, outputs, batch, ctx).item() == pytest.approx(expected.item(), rel=1e-5)


def test_warmup_loss_by_hand():
    remix = method(Remix)                                    # aux_weight 0.5
    pool = make_pool(16, missing=0.4)
    rows = np.arange(16)
    model = remix.model
    model.load_state_dict(initial_state(remix))
    ctx = remix.prepare_round(model, initial_state(remix), pool, rows, client(rows), 0)
    batch = next(iter(remix.epoch_batches(model, pool, rows, torch.Generator().manual_seed(0), ctx, 0)))
    assert not isinstance(batch, RemixBatch) and len(batch.indices) == 8
    outputs = model(batch.inputs, batch.present)
    y = batch.labels
    u = {m: outputs.features[m].detach() for m in (A, V)}
    zeros = torch.zeros_like(u[A])
    has = {m: batch.present[m] for m in (A, V)}
    both = has[A] & has[V]
    assert 0 < int(both.sum()) < 8
    with torch.no_grad():
        fused = model.fusion(u[A], u[V])
        only_a, only_v = model.fusion(u[A], zeros), model.fusion(zeros, u[V])     # zero slot
        self_logits = {m: u[m] @ model.branches[m].classifier.weight.T + model.branches[m].classifier.bias
                       for m in (A, V)}
    total = (_ce(fused, y)[both].sum() + 0.5 * (_ce(self_logits[A], y) + _ce(self_logits[V], y))[both].sum()
             + _ce(only_a, y)[has[A] & ~both].sum() + _ce(only_v, y)[has[V] & ~both].sum())
    assert remix.local_loss(model, outputs, batch, ctx).item() == pytest.approx(total.item() / 8, rel=1e-5)


def test_warmup_rounds_rule_and_the_warmup_is_fedavg_with_half_self_weight():
    remix = method(Remix)
    for rounds, warmup in ((1, 1), (5, 1), (19, 1), (20, 2), (30, 3)):
        remix.total_rounds = rounds
        assert remix.warmup_rounds() == warmup
    assert method(Remix, RemixHparams(warmup_rounds=0)).warmup_rounds() == 0
    assert method(Remix, RemixHparams(warmup_rounds=4)).warmup_rounds() == 4
    remix.total_rounds = 30
    pool = make_pool(24)                                     # every row multimodal: the zero slot is unused
    start = initial_state(remix)
    warm = remix.client_update(start, pool, client(range(24)), 2, seed=1)
    assert "remix_shares" not in warm.metrics
    assert_states_equal(warm.state, method(FedAvg, FedAvgHparams(aux_weight=0.5)).client_update(
        start, pool, client(range(24)), 2, seed=1).state)
    remixed = remix.client_update(start, pool, client(range(24)), 3, seed=1)
    assert remixed.metrics["remix_scored"] == [24] and len(remixed.metrics["remix_shares"]) == 1


def test_client_update_is_deterministic_and_reports_each_epochs_shares():
    remix = method(Remix, train=TrainConfig(batch_size=8, local_epochs=2))
    pool = make_pool(48, missing=0.3)
    start = _mixed_start(remix)
    run = lambda seed: remix.client_update(start, pool, client(range(48)), 1, seed=seed)
    first, again, other = run(3), run(3), run(4)
    assert_states_equal(first.state, again.state)
    assert first.metrics == again.metrics
    assert any(not torch.equal(first.state[k], other.state[k]) for k in first.state)
    n = int((pool.present[A] & pool.present[V]).sum())
    assert first.metrics["remix_scored"] == [n, n]
    assert all(s[0] + s[1] == pytest.approx(1.0) for s in first.metrics["remix_shares"])
    expected = _hand_assignment(remix, start, pool)
    assert first.metrics["remix_shares"][0] == [len(expected[A]) / n, len(expected[V]) / n]
    assert first.trained_groups == {"audio.encoder", "audio.classifier", "visual.encoder", "visual.classifier",
                                    "fusion"}


def test_server_reports_the_rounds_sample_weighted_shares():
    remix = method(Remix)
    state0 = remix.init_server_state(3, NUM_CLASSES)
    assert remix.server_metrics(state0) == {"share_audio": None, "share_visual": None}
    start = initial_state(remix)
    upd = lambda cid, metrics: ClientUpdate(cid, 10, start, set(), {"loss": 1.0, **metrics})
    updates = [upd(0, {"remix_shares": [[0.25, 0.75], [0.5, 0.5]], "remix_scored": [4, 4]}),
               upd(1, {"remix_shares": [[1.0, 0.0]], "remix_scored": [8]}),
               upd(2, {})]                                                  # e.g. no multimodal samples
    _, state = remix.server_update(start, state0, updates, 5)
    assert torch.isnan(state0["shares"]).all()                              # the input is not modified
    # (4·0.25 + 4·0.5 + 8·1) / 16 = 11/16 to audio, 5/16 to visual
    assert remix.server_metrics(state) == pytest.approx({"share_audio": 11 / 16, "share_visual": 5 / 16})
    _, warm = remix.server_update(start, state, [upd(2, {})], 6)            # a warm-up round
    assert remix.server_metrics(warm) == {"share_audio": None, "share_visual": None}


def test_bad_settings_are_user_errors():
    with pytest.raises(CmiError, match="gamma"):
        RemixHparams(gamma=-1)
    with pytest.raises(CmiError, match="warmup_rounds"):
        RemixHparams(warmup_rounds=-1)
    with pytest.raises(CmiError, match="two modalities"):
        Remix(lambda: build_model(SPECS[:1], NUM_CLASSES, ModelConfig(embed_dim=8)), TrainConfig(), RemixHparams(), CPU)
