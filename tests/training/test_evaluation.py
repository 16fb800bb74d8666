import numpy as np
import pytest
import torch

from pipelines.artifacts import eval_paths
from pipelines.training.evaluation import Predictions, client_accuracy, predict, selection_path, split_metrics
from tests.fl.common import NUM_CLASSES, factory, make_pool

PATHS = eval_paths(["audio", "visual"])
LABELS = np.array([0, 0, 1, 1, 2, 2])
# ground-truth probabilities of the audio / visual self classifiers; rows 1 and 4 lack a modality.
# Row 3's visual probability is ≈ 0: its per-sample ratio 0.2 / 1e-9 = 2e8 would swamp a mean of
# ratios ((2 + 1 + 2e8 + 3.5) / 4 ≈ 5e7); the ratio of sums stays at 2.0 / 1.000000001.
P_AUDIO = np.array([0.6, 0.9, 0.5, 0.2, 0.9, 0.7])
P_VISUAL = np.array([0.3, 0.1, 0.5, 1e-9, 0.1, 0.2])
BOTH = np.array([True, False, True, True, False, True])


def logits_with(p_true: np.ndarray, labels: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """Logits whose softmax gives ``p_true`` to the label and splits the rest evenly."""
    probs = np.repeat(((1 - p_true) / (num_classes - 1))[:, None], num_classes, axis=1)
    probs[np.arange(len(labels)), labels] = p_true
    return np.log(probs)


def hand_made() -> Predictions:
    labels = LABELS
    self_logits = np.stack([logits_with(P_AUDIO, labels), logits_with(P_VISUAL, labels)], axis=1)
    self_logits[~BOTH] = np.nan
    return Predictions(
        labels=labels,
        paths={
            "fused": np.array([0, 1, 1, 1, -1, 2], np.int32),
            "audio_only": np.array([0, 0, 1, 0, 2, 2], np.int32),
            "visual_only": np.full(6, -1, np.int32),
        },
        routed=np.array([0, 1, 1, 1, 2, 2], np.int32),
        self_logits=self_logits.astype(np.float32),
    )


def test_split_metrics_match_hand_computation():
    m = split_metrics(hand_made(), num_classes=3)
    # fused: 5 defined rows, correct rows 0, 2, 3, 5
    assert m["accuracy"]["fused"] == pytest.approx(4 / 5)
    assert m["per_class_recall"]["fused"] == pytest.approx([1 / 2, 2 / 2, 1 / 1])
    # F1: class 0 P=1/1 R=1/2 -> 2/3; class 1 P=2/3 R=1 -> 4/5; class 2 P=1 R=1 -> 1
    assert m["macro_f1"]["fused"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    # audio_only: correct 0, 1, 2, 4, 5 of 6; class 1 recall 1/2 (row 3 predicted 0)
    assert m["accuracy"]["audio_only"] == pytest.approx(5 / 6)
    assert m["per_class_recall"]["audio_only"] == pytest.approx([1.0, 0.5, 1.0])
    # class 0: P = 2/3, R = 1 -> 0.8; class 1: P = 1, R = 1/2 -> 2/3; class 2: 1
    assert m["macro_f1"]["audio_only"] == pytest.approx((0.8 + 2 / 3 + 1) / 3)
    # a path defined nowhere is null, not NaN (metrics.jsonl stays valid JSON)
    assert m["accuracy"]["visual_only"] is None and m["macro_f1"]["visual_only"] is None
    assert m["per_class_recall"]["visual_only"] == [None, None, None]
    # ρ = Σ p_audio / Σ p_visual over rows 0, 2, 3, 5 = (0.6 + 0.5 + 0.2 + 0.7) / (0.3 + 0.5 + 1e-9 + 0.2)
    assert m["imbalance_ratio"] == pytest.approx(2.0 / 1.000000001, rel=1e-6)


def test_client_accuracy_mean_std_and_worst_tenth():
    clients = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3])
    labels = np.zeros(16, dtype=np.int64)
    preds = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, -1])  # client 3: nothing defined
    acc = client_accuracy(clients, labels, preds)
    per_client = np.array([0.5, 1.0, 0.5])
    assert acc["mean"] == pytest.approx(per_client.mean())
    assert acc["std"] == pytest.approx(per_client.std())
    assert acc["worst10"] == pytest.approx(0.5)  # ceil(10% of 3) = 1 client


def test_concat_stacks_blocks_of_rows():
    a = hand_made()
    both = Predictions.concat([a, a])
    assert both.labels.tolist() == a.labels.tolist() * 2
    assert both.paths["fused"].tolist() == a.paths["fused"].tolist() * 2
    m1, m2 = split_metrics(a, 3), split_metrics(both, 3)
    assert m1["accuracy"] == m2["accuracy"] and m1["per_class_recall"] == m2["per_class_recall"]
    assert both.self_logits.shape == (12, 2, 3)
    assert m2["imbalance_ratio"] == pytest.approx(m1["imbalance_ratio"], rel=1e-12)   # sums double alike


def test_predict_matches_a_direct_forward_and_marks_undefined_rows():
    pool = make_pool(n=40, seed=3, missing=0.5)
    model = factory()()
    pred = predict(model, pool, PATHS, ("audio", "visual"), batch_size=7)
    model.eval()
    with torch.no_grad():
        out = model(pool.inputs, pool.present)
    audio, visual = pool.present["audio"].numpy(), pool.present["visual"].numpy()
    assert pred.labels.tolist() == pool.labels.tolist()
    expected_valid = {"fused": audio & visual, "audio_only": audio, "visual_only": visual,
                      "audio_self": audio, "visual_self": visual}
    assert 0 < (audio & visual).sum() < 40
    for path in PATHS:
        valid = expected_valid[path]
        assert ((pred.paths[path] >= 0) == valid).all(), path
        assert pred.paths[path].dtype == np.int32
        assert (pred.paths[path][valid] == out.paths[path].argmax(1).numpy()[valid]).all(), path
    assert (pred.routed == out.routed.argmax(1).numpy()).all()
    both = audio & visual
    for k, m in enumerate(("audio", "visual")):
        # batches of 7 vs one batch of 40: the matmul kernels may round differently (last bits)
        np.testing.assert_allclose(pred.self_logits[both, k], out.self_logits[m].numpy()[both], rtol=1e-5, atol=1e-6)
    assert np.isnan(pred.self_logits[~both]).all()
    probs = {m: torch.softmax(out.self_logits[m].double(), 1)[torch.arange(40), pool.labels].numpy()
             for m in ("audio", "visual")}
    assert split_metrics(pred, NUM_CLASSES)["imbalance_ratio"] == pytest.approx(
        probs["audio"][both].sum() / probs["visual"][both].sum(), rel=1e-5)
    none = predict(model, pool, PATHS, ("audio", "visual"), batch_size=7, indices=np.zeros(0, np.int64))
    assert none.self_logits.shape == (0, 2, NUM_CLASSES) and split_metrics(none, NUM_CLASSES)["imbalance_ratio"] is None
    assert Predictions.concat([none, pred]).self_logits.shape == (40, 2, NUM_CLASSES)


def test_predict_of_a_one_modality_model_leaves_the_other_paths_undefined():
    from tests.fl.common import SPECS
    pool = make_pool(n=12)
    model = factory(specs=[SPECS[1]])()
    pred = predict(model, pool, PATHS, ("audio", "visual"), batch_size=5)
    assert pred.self_logits is None
    assert (pred.paths["visual_self"] >= 0).all()
    for path in ("fused", "audio_only", "visual_only", "audio_self"):
        assert (pred.paths[path] == -1).all()
    assert selection_path(model.modalities) == "visual_self"
    assert selection_path(("audio", "visual")) == "fused"
    assert split_metrics(pred, NUM_CLASSES)["imbalance_ratio"] is None
