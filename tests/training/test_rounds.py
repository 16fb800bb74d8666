import math

import numpy as np
import pytest
import torch

from pipelines.fl import ClientUpdate
from pipelines.training.rounds import (
    TrainingDiverged, check_update, client_seed, mean_loss, mean_temperatures, sample_clients,
)


def update(cid, n, loss=1.0, temps=None, state=None):
    metrics = {"loss": loss} if temps is None else {"loss": loss, "temperatures": temps}
    return ClientUpdate(cid=cid, num_samples=n, state=state or {"w": torch.ones(2)}, trained_groups=set(),
                        metrics=metrics)


def test_sampling_is_without_replacement_seeded_and_uniform():
    rounds = [sample_clients(seed=7, round_=r, num_clients=20, clients_per_round=5) for r in range(1, 2001)]
    for chosen in rounds[:50]:
        assert len(chosen) == 5 == len(set(chosen)) and chosen == sorted(chosen)
        assert all(0 <= c < 20 for c in chosen)
    assert rounds[0] == sample_clients(7, 1, 20, 5)
    assert rounds[0] != sample_clients(8, 1, 20, 5) or rounds[1] != sample_clients(8, 2, 20, 5)
    counts = np.bincount(np.concatenate(rounds), minlength=20)
    # each client is picked with probability 1/4: 500 expected of 2000, sd ~19.4; allow 5 sd
    assert np.abs(counts - 500).max() < 5 * math.sqrt(2000 * 0.25 * 0.75)
    assert sample_clients(0, 1, 3, 5) == [0, 1, 2]


def test_client_seeds_differ_across_clients_rounds_and_runs():
    seeds = {client_seed(s, r, c) for s in range(3) for r in range(1, 6) for c in range(20)}
    assert len(seeds) == 3 * 5 * 20
    assert client_seed(0, 1, 2) == client_seed(0, 1, 2)


def test_sample_weighted_loss_and_temperatures():
    updates = [update(0, 10, 1.0, [1.0, 0.5]), update(1, 30, 2.0, None), update(2, 30, 3.0, [0.5, 1.0]),
               update(3, 0, 0.0, [0.1, 0.1])]
    assert mean_loss(updates) == pytest.approx((10 * 1 + 30 * 2 + 30 * 3) / 70)
    # temperatures: clients 0 and 2 report them (weights 10, 30); client 3 trained nothing
    assert mean_temperatures(updates) == pytest.approx([(10 * 1 + 30 * 0.5) / 40, (10 * 0.5 + 30 * 1) / 40])
    assert mean_temperatures(updates[1:2]) is None
    assert mean_loss([]) is None


@pytest.mark.parametrize("bad, fragment", [
    (update(4, 5, loss=float("nan")), "non-finite local loss (nan)"),
    (update(4, 5, loss=float("inf")), "non-finite local loss (inf)"),
    (update(4, 5, state={"w": torch.tensor([1.0, float("inf")])}), "non-finite weights"),
    (update(4, 5, state={"a": torch.ones(3), "n": torch.tensor(2), "b": torch.tensor(float("nan"))}),
     "non-finite weights"),
])
def test_check_update_names_round_and_client(bad, fragment):
    with pytest.raises(TrainingDiverged) as err:
        check_update(6, bad)
    assert "round 6" in str(err.value) and "client 4" in str(err.value) and fragment in str(err.value)
    assert "--lr" in str(err.value)
    check_update(6, update(4, 5, state={"step": torch.tensor(3)}))
    check_update(6, update(4, 0, loss=float("nan")))  # an empty update trained nothing
