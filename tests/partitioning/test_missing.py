import math

import numpy as np
import pytest

from pipelines.partitioning.missing import client_level_missing, missing_client_count, sample_level_missing


def _present(n, only_a=0, only_b=0):
    """n samples; the first only_a have only modality a, the next only_b only modality b."""
    a = np.ones(n, dtype=bool)
    b = np.ones(n, dtype=bool)
    b[:only_a] = False
    a[only_a:only_a + only_b] = False
    return {"a": a, "b": b}


@pytest.mark.parametrize(("fraction", "clients", "expected"), [
    (0.3, 20, 6), (0.3, 37, 11), (0.5, 5, 3), (0.25, 2, 1), (0.0, 9, 0), (1.0, 9, 9), (0.04, 10, 0),
])
def test_missing_client_count_rounds_half_up(fraction, clients, expected):
    assert missing_client_count(fraction, clients) == expected


@pytest.mark.parametrize(("fraction", "clients"), [(0.3, 20), (0.3, 37), (0.5, 5), (1.0, 8)])
def test_client_level_missing_picks_exactly_round_pk_clients(fraction, clients):
    client = np.arange(10 * clients) % clients
    present = _present(len(client))
    available, lost = client_level_missing(client, present, clients, fraction, None, seed=3)
    assert (lost >= 0).sum() == missing_client_count(fraction, clients)
    for k in range(clients):
        rows = client == k
        for i, m in enumerate(present):
            # a missing client's samples all lack its lost modality; the other modality is untouched
            assert (available[m][rows] == (lost[k] != i)).all()


def test_client_level_missing_fixed_modality_and_uniform_choice():
    clients = 1000
    client = np.arange(clients)
    _, lost = client_level_missing(client, _present(clients), clients, 1.0, 1, seed=0)
    assert (lost == 1).all()
    _, lost = client_level_missing(client, _present(clients), clients, 1.0, None, seed=0)
    # Binomial(1000, 1/2): sd 15.8; bound 5 sd
    assert abs((lost == 0).sum() - 500) < 5 * math.sqrt(1000 * 0.25)


def test_client_level_missing_never_gains_a_modality_and_is_seeded():
    rng = np.random.default_rng(0)
    client = rng.integers(10, size=500)
    present = {"a": rng.random(500) < 0.7, "b": rng.random(500) < 0.7}
    available, lost = client_level_missing(client, present, 10, 0.5, None, seed=1)
    for m in present:
        assert not (available[m] & ~present[m]).any()
    again, lost_again = client_level_missing(client, present, 10, 0.5, None, seed=1)
    np.testing.assert_array_equal(lost, lost_again)
    _, other = client_level_missing(client, present, 10, 0.5, None, seed=2)
    assert (lost != other).any()


def test_sample_level_missing_fraction_within_binomial_tolerance():
    n, fraction = 40_000, 0.3
    available, lost = sample_level_missing(_present(n), fraction, None, seed=0)
    stripped = lost >= 0
    # stripped ~ Binomial(n, P) / n: sd = sqrt(P(1-P)/n) = 0.0023; bound 5 sd = 0.011
    assert abs(stripped.mean() - fraction) < 5 * math.sqrt(fraction * (1 - fraction) / n)
    # each modality lost with probability P/2: sd 0.0019; bound 5 sd
    for i, m in enumerate(("a", "b")):
        share = (lost == i).mean()
        assert abs(share - fraction / 2) < 5 * math.sqrt(fraction / 2 * (1 - fraction / 2) / n)
        assert (available[m] == (lost != i)).all()
    # nobody loses both
    assert (available["a"] | available["b"]).all()


def test_sample_level_missing_respects_shard_masks_and_fixed_modality():
    n = 20_000
    present = _present(n, only_a=3000, only_b=2000)
    available, lost = sample_level_missing(present, 0.6, None, seed=1)
    for m in present:
        assert not (available[m] & ~present[m]).any()  # never gains
    single = slice(0, 5000)
    assert (lost[single] == -1).all()  # one-modality samples keep their only modality
    for m in present:
        np.testing.assert_array_equal(available[m][single], present[m][single])
    available, lost = sample_level_missing(present, 0.6, 0, seed=1)
    assert set(np.unique(lost)) == {-1, 0}
    multi = lost[5000:] == 0
    # only the 15,000 multimodal samples are eligible; sd of the share = 0.004, bound 5 sd
    assert abs(multi.mean() - 0.6) < 5 * math.sqrt(0.6 * 0.4 / 15_000)
    assert available["b"][5000:].all()
