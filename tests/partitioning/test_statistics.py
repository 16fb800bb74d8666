import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from pipelines.partitioning.statistics import class_counts, label_heterogeneity, partition_statistics


def test_heterogeneity_matches_hand_computation():
    # client 0 holds 2 samples of class 0; client 1 one of each. Global distribution g = (3/4, 1/4).
    counts = np.array([[2, 0], [1, 1]])
    measures = label_heterogeneity(counts)
    # TV: 1/2(|1 - 3/4| + |0 - 1/4|) = 0.25 and 1/2(|1/2 - 3/4| + |1/2 - 1/4|) = 0.25
    np.testing.assert_allclose(measures["tv_distance"], [0.25, 0.25])
    # JS, client 0: m = (7/8, 1/8); KL(p||m) = log2(8/7); KL(g||m) = 3/4 log2(6/7) + 1/4 log2(2)
    js0 = math.sqrt((math.log2(8 / 7) + 0.75 * math.log2(6 / 7) + 0.25) / 2)
    # client 1: m = (5/8, 3/8); KL(p||m) = 1/2 log2(4/5) + 1/2 log2(4/3); KL(g||m) = 3/4 log2(6/5) + 1/4 log2(2/3)
    js1 = math.sqrt((0.5 * math.log2(0.8) + 0.5 * math.log2(4 / 3) + 0.75 * math.log2(1.2) + 0.25 * math.log2(2 / 3)) / 2)
    assert js0 == pytest.approx(0.371383, abs=1e-6)
    assert js1 == pytest.approx(0.220896, abs=1e-6)
    np.testing.assert_allclose(measures["js_distance"], [js0, js1], rtol=1e-12)
    # effective classes: exp(0) = 1 for a one-class client, exp(ln 2) = 2 for a balanced two-class one
    np.testing.assert_allclose(measures["effective_classes"], [1.0, 2.0])
    global_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert measures["global_effective_classes"] == pytest.approx(math.exp(global_entropy))


def test_js_agrees_with_scipy_and_is_zero_not_nan_for_near_identical_distributions():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(30, 8))
    counts[:, 0] += 1
    measures = label_heterogeneity(counts)
    global_dist = counts.sum(axis=0) / counts.sum()
    scipy_js = [jensenshannon(row / row.sum(), global_dist, base=2) for row in counts]
    np.testing.assert_allclose(measures["js_distance"], scipy_js, rtol=1e-9)
    identical = np.tile(np.array([[1_000_003, 999_999, 1_000_001]]), (50, 1)) + np.arange(50)[:, None] % 2
    js = label_heterogeneity(identical)["js_distance"]
    assert np.isfinite(js).all() and js.max() < 1e-3


def test_partition_statistics_counts_and_availability():
    client = np.array([0, 0, 1, 1, 1, 2])
    labels = np.array([0, 1, 1, 1, 0, 2])
    available = {"a": np.array([1, 1, 0, 0, 0, 1], bool), "b": np.array([1, 0, 1, 1, 1, 1], bool)}
    stats = partition_statistics(client, labels, available, 3, 3)
    assert stats["class_counts"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    np.testing.assert_array_equal(class_counts(client, labels, 3, 3), stats["class_counts"])
    assert stats["client_sizes"] == [2, 3, 1]
    assert stats["modality_counts"] == {"a": [2, 0, 1], "b": [1, 3, 1]}
    assert stats["multimodal_counts"] == [1, 0, 1]
    assert stats["client_modalities"] == {"a": [True, False, True], "b": [True, True, True]}
    assert stats["sizes"] == {"min": 1, "median": 2.0, "max": 3, "mean": 2.0}
    assert stats["heterogeneity"]["classes_present"] == [2, 2, 1]
    assert stats["heterogeneity"]["effective_classes"][2] == 1.0
    # client 2 holds only class 2 (global share 1/6): TV = 1 - 1/6
    assert stats["heterogeneity"]["tv_distance"][2] == pytest.approx(5 / 6, abs=1e-6)


def test_partition_statistics_report_every_modality_of_three():
    client = np.array([0, 0, 0, 1, 1, 2, 2])
    labels = np.array([0, 1, 2, 0, 0, 1, 1])
    available = {
        "accel": np.array([1, 1, 0, 0, 0, 1, 1], bool),   # client 1 lost {accel, gyro}
        "gyro": np.array([1, 0, 1, 0, 0, 1, 0], bool),
        "feat": np.array([1, 1, 1, 1, 1, 0, 0], bool),    # client 2 lost {feat}
    }
    stats = partition_statistics(client, labels, available, 3, 3)
    assert stats["modality_counts"] == {"accel": [2, 0, 2], "gyro": [2, 0, 1], "feat": [3, 2, 0]}
    assert stats["client_modalities"] == {"accel": [True, False, True], "gyro": [True, False, True],
                                          "feat": [True, True, False]}
    assert stats["multimodal_counts"] == [1, 0, 0]  # samples with all three
