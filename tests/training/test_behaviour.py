"""FedCMI against FedAvg where the weak modality is weak the way real ones are: on the
shift-synthetic dataset (`cmi prepare synthetic --shift 1 --imbalance 0.2 --split actor`) every
actor has its own voice and face nuisance and the test actors are unseen, so the visual modality
generalises badly (Bayes accuracy 73% for a known actor, 35% for an unseen one) while audio stays
the stronger one (83% / 71%).

Setting: the README's defaults (`cmi train` with no option but the method and seed), Dirichlet
0.5, 20 clients, 30% missing a modality, seeds 0, 1 and 2 (partition and training), small
feature sizes (32x32 frames, n_fft 256) to keep the test fast. Accuracies are means over the last
LAST rounds (test split) and over the three seeds.

What is asserted is what the evidence supports (README, "Defaults and the evidence behind them"):

* the premise: visual is the weak modality, and weak by generalisation: the final FedAvg
  model's visual self classifier loses more from the training actors to the unseen test actors
  than the audio one does;
* FedCMI at its defaults does not cost fused accuracy: at most FUSED_TOLERANCE below FedAvg's
  (its μ = 1 default at lr 0.02 cost 13 points on a real dataset; this would catch that).

Not asserted, because it does not hold: a weak-modality gain. On this data FedCMI's weak
modality stays at FedAvg's level (README: visual-only +0.3, visual self −2.6 points over 5 seeds
at full feature size).
"""

import numpy as np
import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace
from pipelines.engines.local import run as run_local
from pipelines.training.config import resolve_config
from pipelines.training.evaluation import predict
from pipelines.training.progress import QuietProgress
from pipelines.training.session import open_session

SEEDS = (0, 1, 2)
LAST = 10
FUSED_TOLERANCE = 0.05
SELF_PATHS = ("audio_self", "visual_self")


def cmi(ws: Workspace, *args: str) -> None:
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), *args])
    assert result.exit_code == 0, result.output


def late_accuracy(session, path: str) -> float:
    """Mean test accuracy of ``path`` over the last LAST rounds."""
    return float(np.mean([line["test"]["accuracy"][path] for line in session.run.read_metrics()[-LAST:]]))


def generalisation_gap(session) -> dict[str, float]:
    """Per self path: the final global model's accuracy on the training rows minus on the test rows."""
    model = session.eval_model
    model.load_state_dict(session.global_state)
    accuracy = {}
    for split, samples in (("train", session.data.train), ("test", session.data.splits["test"])):
        pred = predict(model, samples.pool, SELF_PATHS, list(session.data.modalities), 256)
        for path in SELF_PATHS:
            defined = pred.paths[path] >= 0
            accuracy[split, path] = float((pred.paths[path][defined] == pred.labels[defined]).mean())
    return {path: accuracy["train", path] - accuracy["test", path] for path in SELF_PATHS}


@pytest.mark.slow
def test_on_unseen_actors_visual_is_weak_by_generalisation_and_fedcmi_keeps_fused_accuracy(tmp_path):
    ws = Workspace(tmp_path / "ws")
    cmi(ws, "prepare", "synthetic", "--shift", "1", "--imbalance", "0.2", "--clips", "720", "--split", "actor",
        "--image-size", "32", "--frames", "2", "--n-fft", "256", "--hop-length", "512", "--quiet")
    late = {"fedavg": [], "fedcmi": []}
    gaps = []
    for seed in SEEDS:
        cmi(ws, "partition", "--alpha", "0.5", "--missing", "0.3", "--seed", str(seed), "--name", f"p{seed}", "--quiet")
        for method in late:
            session = open_session(ws, resolve_config({}, {"method": method, "seed": seed, "device": "cpu"}),
                                   partition=f"p{seed}")
            run_local(session, QuietProgress())
            late[method].append({p: late_accuracy(session, p) for p in ("fused", *SELF_PATHS)})
            if method == "fedavg":
                gaps.append(generalisation_gap(session))
    mean = {m: {p: float(np.mean([r[p] for r in runs])) for p in runs[0]} for m, runs in late.items()}
    gap = {p: float(np.mean([g[p] for g in gaps])) for p in SELF_PATHS}

    assert mean["fedavg"]["visual_self"] < mean["fedavg"]["audio_self"], mean
    assert gap["visual_self"] > gap["audio_self"], gap
    assert mean["fedcmi"]["fused"] >= mean["fedavg"]["fused"] - FUSED_TOLERANCE, mean
