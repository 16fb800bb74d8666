import pytest
import torch

from pipelines.errors import CmiError
from pipelines.fl import METHODS, Centralized, FedAvg, Local, TrainConfig, Unimodal, UnimodalHparams, get_method
from tests.fl.common import SPECS, assert_states_equal, client, factory, initial_state, make_pool, method, only


def test_registry():
    assert list(METHODS) == ["fedavg", "fedprox", "fedcmi", "cmsfed", "pmr", "ogm_ge", "aug", "mnl", "remix", "arm", "agm",
                             "mmpareto", "unimodal", "centralized", "local"]
    assert get_method("local") is Local and not Local.federated and Centralized.pooled
    assert all(cls.federated for name, cls in METHODS.items() if name != "local")
    with pytest.raises(CmiError, match="fedavg, fedprox, fedcmi"):
        get_method("scaffold")


def test_unimodal_builds_one_modality_and_skips_clients_without_it():
    hp = UnimodalHparams(modality="visual")
    assert [s.name for s in Unimodal.select_specs(SPECS, hp)] == ["visual"]
    with pytest.raises(CmiError, match="audio, visual"):
        Unimodal.select_specs(SPECS, UnimodalHparams())
    with pytest.raises(ValueError, match="select_specs"):
        Unimodal(factory(SPECS), TrainConfig(), hp, torch.device("cpu"))      # a two-modality model
    uni = method(Unimodal, hp)
    start = initial_state(uni)
    assert set(uni.groups) == {"visual.encoder", "visual.classifier"}
    pool = make_pool(24, missing=0.5)
    skipped = uni.client_update(start, only(pool, "audio"), client(range(24), ("audio",)), 0, seed=1)
    assert skipped.num_samples == 0 and skipped.trained_groups == set() and skipped.state is start
    update = uni.client_update(start, pool, client(range(24)), 0, seed=1)
    assert update.num_samples == int(pool.present["visual"].sum()) < 24
    assert update.trained_groups == {"visual.encoder", "visual.classifier"}
    new = uni.aggregate(start, [skipped, update])
    assert_states_equal(new, update.state)


def test_local_keeps_a_persistent_model_per_client():
    local = method(Local)
    start = initial_state(local)
    pool = make_pool(16)
    first = local.client_update(start, pool, client(range(16)), 0, seed=2)
    assert first.client_state is first.state
    assert local.aggregate(start, [first]) == start
    # the next participation continues from the client's own model, not from the global one
    second = local.client_update(start, pool, client(range(16)), 1, seed=3, client_state=first.client_state)
    as_fedavg = method(FedAvg).client_update(first.client_state, pool, client(range(16)), 1, seed=3)
    assert_states_equal(second.state, as_fedavg.state)


def test_centralized_is_fedavg_on_one_pooled_client():
    central, fedavg = method(Centralized), method(FedAvg)
    start = initial_state(central)
    pool = make_pool(24, missing=0.3)
    update = central.client_update(start, pool, client(range(24)), 0, seed=5)
    assert_states_equal(update.state, fedavg.client_update(start, pool, client(range(24)), 0, seed=5).state)
    assert_states_equal(central.aggregate(start, [update]), update.state)
