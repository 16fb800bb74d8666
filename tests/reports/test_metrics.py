"""Metrics against hand computation on the toy predictions of conftest.py."""

import math

import numpy as np
import pytest

from pipelines.errors import CmiError
from pipelines.reports.metrics import (
    client_stats, confusion_counts, paired_accuracy_gap, path_metrics, worst_count,
)
from tests.reports.conftest import FEDAVG_CLIENTS, FEDAVG_FINAL, LABELS, client_preds

LABELS_A = np.array(LABELS)


def test_confusion_counts_skip_undefined_rows():
    counts = confusion_counts(LABELS_A, np.array(FEDAVG_FINAL["fused"]), 3)
    # fused: a -> a a a a; b -> a b b; c -> c b (the last c row is -1, undefined)
    np.testing.assert_array_equal(counts, [[4, 0, 0], [1, 2, 0], [0, 1, 1]])


def test_confusion_counts_reject_foreign_class_indices():
    with pytest.raises(CmiError, match="cmi train"):
        confusion_counts(np.array([0, 1]), np.array([0, 3]), 3)


def test_path_metrics_fused_by_hand():
    pm = path_metrics(LABELS_A, np.array(FEDAVG_FINAL["fused"]), 3)
    assert pm.rows == 9 and pm.coverage == pytest.approx(0.9)
    assert pm.accuracy == pytest.approx(7 / 9)
    np.testing.assert_allclose(pm.recall, [1.0, 2 / 3, 1 / 2])
    # precision a = 4/5, b = 2/3, c = 1/1 -> F1 a = 8/9, b = 2/3, c = 2/3
    np.testing.assert_allclose(pm.f1, [8 / 9, 2 / 3, 2 / 3])
    assert pm.macro_f1 == pytest.approx((8 / 9 + 2 / 3 + 2 / 3) / 3)
    assert pm.balanced_accuracy == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert (pm.worst_class, pm.worst_class_recall) == (2, pytest.approx(0.5))
    mean = 13 / 18
    assert pm.recall_std == pytest.approx(math.sqrt(((1 - mean) ** 2 + (2 / 3 - mean) ** 2 + (1 / 2 - mean) ** 2) / 3))
    assert pm.recall_gap == pytest.approx(0.5)


def test_path_metrics_class_absent_from_labels_is_left_out_of_class_averages():
    # class 2 never occurs but is predicted once: recall NaN, averages over classes 0 and 1 only
    pm = path_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), 3)
    assert math.isnan(pm.recall[2]) and pm.f1[2] == 0.0
    assert pm.balanced_accuracy == pytest.approx(0.75)
    # precision 0 = 1, recall 0 = 1/2 -> F1 2/3; class 1: F1 1
    assert pm.macro_f1 == pytest.approx((2 / 3 + 1) / 2)
    assert pm.recall_std == pytest.approx(0.25) and pm.recall_gap == pytest.approx(0.5)


def test_path_metrics_with_no_defined_row_is_nan():
    pm = path_metrics(np.array([0, 1]), np.array([-1, -1]), 2)
    assert pm.rows == 0 and pm.worst_class is None and math.isnan(pm.accuracy) and math.isnan(pm.macro_f1)


def test_paired_gap_uses_rows_where_both_paths_are_defined():
    # rows 0..8: fused right on 7, audio_only right on 8
    assert paired_accuracy_gap(LABELS_A, np.array(FEDAVG_FINAL["fused"]), np.array(FEDAVG_FINAL["audio_only"])) \
        == pytest.approx(-1 / 9)


@pytest.mark.parametrize("k, expected", [(1, 1), (9, 1), (10, 1), (11, 2), (20, 2), (30, 3), (70, 7), (101, 11)])
def test_worst_count_is_ceil_of_ten_percent(k, expected):
    assert worst_count(k) == expected


def test_client_stats_by_hand():
    c = client_preds(4, FEDAVG_CLIENTS)
    stats = client_stats(np.array(c.client), np.array(c.labels), np.array(c.pred))
    accuracies = [1, 1 / 2, 1 / 4, 1, 1 / 5, 3 / 4, 1, 2 / 3, 1, 1 / 2, 1 / 2, 4 / 5]
    np.testing.assert_array_equal(stats.clients, np.arange(12))
    np.testing.assert_array_equal(stats.samples, [n for n, _ in FEDAVG_CLIENTS])
    np.testing.assert_allclose(stats.accuracy, accuracies)
    mean = sum(accuracies) / 12
    assert stats.mean == pytest.approx(mean)
    assert stats.std == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accuracies) / 12))
    # 12 clients -> the 2 worst: 1/5 and 1/4
    assert stats.worst10_count == 2 and stats.worst10_mean == pytest.approx((1 / 5 + 1 / 4) / 2)


def test_client_stats_skip_undefined_predictions_and_empty_clients():
    stats = client_stats(np.array([0, 0, 2, 2, 2]), np.array([1, 1, 0, 0, 0]), np.array([1, -1, 0, 1, -1]))
    np.testing.assert_array_equal(stats.clients, [0, 2])  # client 1 has no rows
    np.testing.assert_allclose(stats.accuracy, [1.0, 0.5])
    np.testing.assert_array_equal(stats.samples, [1, 2])


def test_path_metrics_agree_with_scikit_learn_on_random_predictions():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (a librosa dependency) cross-check")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 6, 500))
    pm = path_metrics(labels, preds, 6)
    assert pm.accuracy == pytest.approx(metrics.accuracy_score(labels, preds))
    assert pm.balanced_accuracy == pytest.approx(metrics.balanced_accuracy_score(labels, preds))
    assert pm.macro_f1 == pytest.approx(metrics.f1_score(labels, preds, average="macro"))
    np.testing.assert_allclose(pm.recall, metrics.recall_score(labels, preds, average=None))
