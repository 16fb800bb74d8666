import numpy as np
import pytest
import torch

from pipelines.artifacts import eval_paths
from pipelines.training.evaluation import Predictions, client_accuracy, predict, selection_path, split_metrics
from tests.fl.common import NUM_CLASSES, factory, make_pool

PATHS = eval_paths(["audio", "visual"])


def hand_made() -> Predictions:
    labels = np.array([0, 0, 1, 1, 2, 2])
    return Predictions(
        labels=labels,
        paths={
            "fused": np.array([0, 1, 1, 1, -1, 2], np.int32),
            "audio_only": np.array([0, 0, 1, 0, 2, 2], np.int32),
            "visual_only": np.full(6, -1, np.int32),
        },
        routed=np.array([0, 1, 1, 1, 2, 2], np.int32),
        ratio=np.array([2.0, np.nan, 0.5, 1.0, np.nan, 4.0]),
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
    assert m["imbalance_ratio"] == pytest.approx((2.0 + 0.5 + 1.0 + 4.0) / 4)


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
    probs = {m: torch.softmax(out.self_logits[m].double(), 1)[torch.arange(40), pool.labels].numpy()
             for m in ("audio", "visual")}
    both = audio & visual
    assert np.allclose(pred.ratio[both], probs["audio"][both] / probs["visual"][both])
    assert np.isnan(pred.ratio[~both]).all()


def test_predict_of_a_one_modality_model_leaves_the_other_paths_undefined():
    from tests.fl.common import SPECS
    pool = make_pool(n=12)
    model = factory(specs=[SPECS[1]])()
    pred = predict(model, pool, PATHS, ("audio", "visual"), batch_size=5)
    assert pred.ratio is None
    assert (pred.paths["visual_self"] >= 0).all()
    for path in ("fused", "audio_only", "visual_only", "audio_self"):
        assert (pred.paths[path] == -1).all()
    assert selection_path(model.modalities) == "visual_self"
    assert selection_path(("audio", "visual")) == "fused"
    assert split_metrics(pred, NUM_CLASSES)["imbalance_ratio"] is None
