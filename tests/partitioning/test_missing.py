import math

import numpy as np
import pytest

from pipelines.partitioning.missing import (
    client_level_missing, lost_set_count, mask_names, missing_client_count, modality_mask, sample_level_missing,
)


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
    assert (lost != 0).sum() == missing_client_count(fraction, clients)
    assert set(np.unique(lost)) <= {0, 1, 2}  # two modalities: nothing, {a} or {b}
    for k in range(clients):
        rows = client == k
        for i, m in enumerate(present):
            # a missing client's samples all lack its lost modality; the other modality is untouched
            assert (available[m][rows] == (lost[k] >> i & 1 == 0)).all()


def test_client_level_missing_fixed_modality_and_uniform_choice():
    clients = 1000
    client = np.arange(clients)
    _, lost = client_level_missing(client, _present(clients), clients, 1.0, 0b10, seed=0)
    assert (lost == 0b10).all()
    _, lost = client_level_missing(client, _present(clients), clients, 1.0, None, seed=0)
    # Binomial(1000, 1/2): sd 15.8; bound 5 sd
    assert abs((lost == 0b01).sum() - 500) < 5 * math.sqrt(1000 * 0.25)


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
    stripped = lost != 0
    # stripped ~ Binomial(n, P) / n: sd = sqrt(P(1-P)/n) = 0.0023; bound 5 sd = 0.011
    assert abs(stripped.mean() - fraction) < 5 * math.sqrt(fraction * (1 - fraction) / n)
    # each modality lost with probability P/2: sd 0.0019; bound 5 sd
    for i, m in enumerate(("a", "b")):
        share = (lost == 1 << i).mean()
        assert abs(share - fraction / 2) < 5 * math.sqrt(fraction / 2 * (1 - fraction / 2) / n)
        assert (available[m] == (lost != 1 << i)).all()
    # nobody loses both
    assert (available["a"] | available["b"]).all()


def test_sample_level_missing_respects_shard_masks_and_fixed_modality():
    n = 20_000
    present = _present(n, only_a=3000, only_b=2000)
    available, lost = sample_level_missing(present, 0.6, None, seed=1)
    for m in present:
        assert not (available[m] & ~present[m]).any()  # never gains
    single = slice(0, 5000)
    assert (lost[single] == 0).all()  # one-modality samples keep their only modality
    for m in present:
        np.testing.assert_array_equal(available[m][single], present[m][single])
    available, lost = sample_level_missing(present, 0.6, 0b01, seed=1)
    assert set(np.unique(lost)) == {0, 0b01}
    multi = lost[5000:] == 0b01
    # only the 15,000 multimodal samples are eligible; sd of the share = 0.004, bound 5 sd
    assert abs(multi.mean() - 0.6) < 5 * math.sqrt(0.6 * 0.4 / 15_000)
    assert available["b"][5000:].all()


# ----------------------------------------------------------------------------- lost sets, M modalities
#
# A lost set is a bitmask over the modalities in manifest order (bit i: modality i lost; 0: none),
# drawn uniformly over the 2^M - 2 non-empty proper subsets.

def _pinned_inputs():
    """60 samples over 7 clients, modalities a and b each present with probability 0.8."""
    rng = np.random.default_rng(5)
    client = rng.integers(7, size=60)
    return client, {"a": rng.random(60) < 0.8, "b": rng.random(60) < 0.8}


def _masks(indices):
    """The one-modality version's lost indices (-1 none) as lost-set masks."""
    return [0 if i < 0 else 1 << i for i in indices]


def test_two_modalities_draw_exactly_what_the_one_modality_version_drew():
    # values written by the version that lost one modality index (before lost sets), same seeds
    client, present = _pinned_inputs()
    _, lost = client_level_missing(client, present, 7, 0.5, None, seed=0)
    assert lost.tolist() == _masks([-1, 0, 1, 1, -1, 0, -1])
    _, lost = client_level_missing(client, present, 7, 1.0, None, seed=2)
    assert lost.tolist() == _masks([0, 1, 1, 0, 0, 1, 0])
    available, lost = sample_level_missing(present, 0.3, None, seed=1)
    assert lost.tolist() == _masks([
        -1, -1, -1, 0, -1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1, -1,
        1, -1, -1, 0, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1, -1, -1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1,
        -1, -1, -1])
    for i, m in enumerate(present):
        np.testing.assert_array_equal(available[m], present[m] & (lost != 1 << i))
    _, lost = sample_level_missing(present, 0.5, 0b10, seed=0)
    assert np.flatnonzero(lost).tolist() == [3, 8, 12, 14, 15, 16, 20, 24, 27, 34, 35, 41, 44, 50, 54, 58]
    assert set(lost.tolist()) == {0, 0b10}


def test_lost_set_helpers():
    assert [lost_set_count(m) for m in (1, 2, 3, 4)] == [0, 2, 6, 14]
    modalities = ["accel", "gyro", "feat"]
    assert modality_mask(["feat", "accel"], modalities) == 0b101
    assert mask_names(0b110, modalities) == ["gyro", "feat"]


def _three(n):
    return {m: np.ones(n, dtype=bool) for m in ("a", "b", "c")}


def test_three_modalities_sample_level_lost_sets_are_uniform_over_the_six_proper_subsets():
    n, fraction = 60_000, 0.5
    present = _three(n)
    available, lost = sample_level_missing(present, fraction, None, seed=0)
    stripped = lost != 0
    # stripped ~ Binomial(n, P) / n: sd = sqrt(P(1-P)/n) = 0.0020; bound 5 sd
    assert abs(stripped.mean() - fraction) < 5 * math.sqrt(fraction * (1 - fraction) / n)
    # each of the 6 sets (masks 1..6) with probability P/6 = 0.083: sd 0.0011, bound 5 sd = 0.0056
    p = fraction / 6
    shares = np.bincount(lost, minlength=8) / n
    assert shares[7] == 0  # nobody loses all three
    for mask in range(1, 7):
        assert abs(shares[mask] - p) < 5 * math.sqrt(p * (1 - p) / n), (mask, shares)
    # each modality lost with probability P * 3/6 = P/2 (it is in 3 of the 6 sets): sd 0.0018, bound 5 sd
    for i, m in enumerate(present):
        assert abs((lost >> i & 1).mean() - fraction / 2) < 5 * math.sqrt(0.25 * 0.75 / n)
        np.testing.assert_array_equal(available[m], lost >> i & 1 == 0)
    assert np.logical_or.reduce(list(available.values())).all()


def test_three_modalities_client_level_counts_are_exact_and_sets_uniform():
    clients = 6000
    client = np.repeat(np.arange(clients), 2)
    present = _three(len(client))
    for fraction in (0.3, 0.5, 1.0):
        available, lost = client_level_missing(client, present, clients, fraction, None, seed=4)
        assert (lost != 0).sum() == missing_client_count(fraction, clients)  # exactly round(P K) clients
        assert set(np.unique(lost[lost != 0])) == set(range(1, 7))  # only proper, non-empty subsets
        for i, m in enumerate(present):
            np.testing.assert_array_equal(available[m], lost[client] >> i & 1 == 0)
    # P = 1: Multinomial(6000, 1/6 each): sd = sqrt(6000 * 1/6 * 5/6) = 28.9; bound 5 sd
    counts = np.bincount(lost, minlength=8)
    assert counts[0] == counts[7] == 0
    assert (np.abs(counts[1:7] - 1000) < 5 * math.sqrt(6000 / 6 * 5 / 6)).all(), counts


def test_a_fixed_set_is_lost_as_it_is():
    clients = 10
    client = np.arange(40) % clients
    present = _three(40)
    available, lost = client_level_missing(client, present, clients, 0.5, 0b011, seed=0)
    assert sorted(set(lost.tolist())) == [0, 0b011] and (lost != 0).sum() == 5
    losing = lost[client] != 0
    assert not available["a"][losing].any() and not available["b"][losing].any()
    assert available["c"].all() and available["a"][~losing].all()

    # sample level, set {b, c}: samples 0-2 have only b and c (losing both would leave nothing: unchanged),
    # 3-5 have a and b (lose b, keep a), 6-8 only a (nothing of the set to lose), the rest all three
    n = 3000
    present = _three(n)
    present["a"][:3] = False
    present["c"][3:6] = False
    present["b"][6:9] = present["c"][6:9] = False
    available, lost = sample_level_missing(present, 1.0, 0b110, seed=0)
    assert (lost[:3] == 0).all() and (lost[3:6] == 0b010).all() and (lost[6:9] == 0).all()
    assert (lost[9:] == 0b110).all()
    assert available["a"].sum() == n - 3 and not available["b"][3:].any() and available["c"][:3].all()
    assert np.logical_or.reduce(list(available.values())).all()


def test_nobody_loses_everything_and_nothing_is_gained_with_partial_shards():
    rng = np.random.default_rng(7)
    n = 20_000
    present = {m: rng.random(n) < 0.6 for m in ("a", "b", "c", "d")}
    held = sum(present[m].astype(int) << i for i, m in enumerate(present))
    for fixed in (None, 0b0111, 0b1000):
        available, lost = sample_level_missing(present, 1.0, fixed, seed=3)
        now = sum(available[m].astype(int) << i for i, m in enumerate(present))
        assert ((now & ~held) == 0).all()               # never gains
        np.testing.assert_array_equal(lost, held & ~now)  # lost = what it had and no longer has
        assert (now[held != 0] != 0).all()              # a sample with a modality keeps one
        if fixed is not None:
            assert ((lost & ~fixed) == 0).all()
    client = rng.integers(20, size=n)
    available, lost = client_level_missing(client, present, 20, 1.0, None, seed=3)
    assert ((lost != 0) & (lost != 0b1111)).all()  # every client loses a proper subset
