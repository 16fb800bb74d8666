import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import FedAvg, FedProx, FedProxHparams
from tests.fl.common import assert_states_equal, client, initial_state, make_pool, method, only


def test_proximal_gradient_is_mu_times_the_distance_to_the_global_model():
    prox = method(FedProx, FedProxHparams(mu=0.3))
    start = initial_state(prox)
    pool = make_pool(8)
    model = prox.model_factory()
    model.load_state_dict(start)
    ctx = prox.prepare_round(model, start, pool, torch.arange(8).numpy(), client(range(8)), 0)
    names = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        for k, (name, p) in enumerate(model.named_parameters()):
            p.add_(0.5 if k % 2 else -0.25)       # w - w_global = ±0.5 / -0.25 everywhere
            p.grad = torch.full_like(p, 2.0) if name.startswith("branches.audio") else None
    value = prox.regularize_gradients(model, ctx)
    expected_sq = 0.0
    for k, (name, p) in enumerate(model.named_parameters()):
        if name.startswith("branches.audio"):
            diff = 0.5 if k % 2 else -0.25
            assert torch.allclose(p.grad, torch.full_like(p, 2.0 + 0.3 * diff)), name   # grad + μ(w − w_g)
            expected_sq += diff ** 2 * p.numel()
        else:
            assert p.grad is None, name          # not reached by the objective: not regularised
    assert value == pytest.approx(0.5 * 0.3 * expected_sq, rel=1e-6)
    assert names and expected_sq > 0


def test_mu_zero_is_fedavg():
    start = initial_state(method(FedAvg))
    pool = make_pool(24, missing=0.3)
    ours = method(FedProx, FedProxHparams(mu=0.0)).client_update(start, pool, client(range(24)), 0, seed=3)
    plain = method(FedAvg).client_update(start, pool, client(range(24)), 0, seed=3)
    assert_states_equal(ours.state, plain.state)


def test_proximal_pull_changes_the_update_but_not_what_a_unimodal_client_trains():
    start = initial_state(method(FedAvg))
    pool = only(make_pool(24), "visual")
    strong = method(FedProx, FedProxHparams(mu=5.0))
    update = strong.client_update(start, pool, client(range(24), ("visual",)), 0, seed=3)
    plain = method(FedAvg).client_update(start, pool, client(range(24), ("visual",)), 0, seed=3)
    assert update.trained_groups == {"visual.encoder", "fusion"}
    assert_states_equal(update.state, start, strong.groups["audio.encoder"] + strong.groups["audio.classifier"]
                        + strong.groups["visual.classifier"])
    w = "branches.visual.self_projector.weight"
    # the pull toward the global model keeps the update smaller than FedAvg's
    assert (update.state[w] - start[w]).norm() < (plain.state[w] - start[w]).norm()


def test_negative_mu_is_a_user_error():
    with pytest.raises(CmiError, match="mu"):
        FedProxHparams(mu=-1.0)
