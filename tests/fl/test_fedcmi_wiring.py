"""FedCMI's wiring on a hand-built batch whose every logit is chosen here.

A stand-in "global" model returns fixed self logits per pool row (its inputs carry the row number),
so the teacher the method prepares is known row by row; the local forward pass is a hand-made
``ModelOutputs``. Every expected number is computed below with plain numpy, independently of
``pipelines.fl.fedcmi``: which modality is dominant (ρ = Σ p_A[y] / Σ p_B[y] of the LOCAL SELF
logits), the teacher (the frozen global model's DOMINANT SELF logits of each sample's pool row),
the student (the WEAK modality's INFILTRATION logits), the per-sample temperature T[y_i], L_inf and
the whole local objective.

The batch's pool rows are unsorted and skip rows, the client's teacher rows skip a pool row, and
the infiltration logits and the global model's self logits point to the other modality than the
local self logits do, so that reading ρ, the teacher, the student or the temperature from the
wrong place changes the result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.fl import FedCMI, FedCMIHparams, TrainConfig, TrainPool
from pipelines.fl.base import Batch
from pipelines.models import ModelOutputs
from tests.fl.common import CPU, client, factory

MODS = ("audio", "visual")
C = 3
AUX, INF = 1.5, 0.7                             # λ1, λ2: distinct so a swapped weight shows
HPARAMS = FedCMIHparams(aux_weight=AUX, infiltration_weight=INF, mu=1.0, kappa=2.0, warmup_rounds=1,
                        uniform_temperature=None, infiltration=True, proximal=True)
T = np.array([1.0, 0.5, 0.25])                  # class-wise temperatures, all different

# The pool: 8 rows; row 4 has no visual; row 0 is not the client's.
POOL_LABELS = np.array([0, 1, 2, 0, 1, 2, 1, 2])
VISUAL_PRESENT = np.array([True, True, True, True, False, True, True, True])
CLIENT_ROWS = np.array([7, 3, 1, 4, 6, 2, 5])
TEACHER_ROWS = [1, 2, 3, 5, 6, 7]              # the client's multimodal rows, sorted

# The batch: pool rows out of order; position 2 (row 4) is audio-only.
BATCH_ROWS = np.array([6, 3, 4, 7, 1])
LABELS = POOL_LABELS[BATCH_ROWS]                # [1, 0, 1, 2, 1]
BOTH = VISUAL_PRESENT[BATCH_ROWS]               # [T, T, F, T, T]

_rng = np.random.default_rng(7)
# the frozen global model's self logits per pool row; it favours visual (the other way than the
# "audio" scenario's local model), so a ρ read from the teacher would pick the other modality
GLOBAL_SELF = {"audio": _rng.normal(0.0, 1.0, (8, C)), "visual": _rng.normal(0.0, 1.0, (8, C))}
GLOBAL_SELF["visual"][np.arange(8), POOL_LABELS] += 2.0
GLOBAL_SELF["visual"][~VISUAL_PRESENT] = 0.0
_NOISE = {name: _rng.normal(0.0, 1.0, (5, C)) for name in ("self_a", "self_v", "inf_a", "inf_v", "routed")}


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce_rows(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -np.log(np_softmax(logits)[np.arange(len(labels)), labels])


def local_logits(dominant: str) -> dict[str, dict[str, np.ndarray]]:
    """The local forward pass's logits (numpy): the ``dominant`` modality's self classifier is sure
    of the ground truth and the other's is not, while the infiltration classifiers are the other way
    round (a ρ read from them would pick the other modality). Visual rows are zero where the sample
    has no visual, as in ``MultimodalNet``."""
    sign = 1.0 if dominant == "audio" else -1.0
    boost = np.zeros((5, C))
    boost[np.arange(5), LABELS] = 3.0
    out = {
        "self": {"audio": _NOISE["self_a"] + sign * boost, "visual": _NOISE["self_v"] - sign * boost},
        "inf": {"audio": _NOISE["inf_a"] - sign * boost, "visual": _NOISE["inf_v"] + sign * boost},
    }
    for kind in out.values():
        kind["visual"] = np.where(BOTH[:, None], kind["visual"], 0.0)
    return out


def np_rho(a: np.ndarray, b: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> float:
    pa = np_softmax(a[rows])[np.arange(len(labels)), labels]
    pb = np_softmax(b[rows])[np.arange(len(labels)), labels]
    return float(pa.sum() / pb.sum())


def expected(dominant: str) -> dict[str, object]:
    """Hand computation of the spec's L_inf on the batch's multimodal samples."""
    logits = local_logits(dominant)
    weak = MODS[1] if dominant == MODS[0] else MODS[0]
    y = LABELS[BOTH]
    teacher = GLOBAL_SELF[dominant][BATCH_ROWS[BOTH]]          # looked up by POOL row
    student = logits["inf"][weak][BOTH]
    t = T[y][:, None]
    p = np_softmax(teacher / t)
    q = np_softmax(student / t)
    loss = float(np.mean(-(p * np.log(q)).sum(axis=1)))
    grad = np.zeros((5, C))
    grad[BOTH] = (q - p) / (t * BOTH.sum())                      # d L_inf / d student logits
    return {"logits": logits, "weak": weak, "loss": loss, "grad": grad}


class RowTable(nn.Module):
    """Stand-in for the received global model: self logits looked up by the row number its inputs
    carry. No parameters (the proximal reference is then empty)."""

    def __init__(self, tables: dict[str, np.ndarray]):
        super().__init__()
        self.modalities = MODS
        self.num_classes = C
        self.tables = {m: torch.tensor(v, dtype=torch.float32) for m, v in tables.items()}

    def forward(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutputs:
        rows = inputs["audio"][:, 0].long()
        zeros = torch.zeros(rows.shape[0], C)
        both = present["audio"] & present["visual"]
        return ModelOutputs(routed=zeros, routed_valid=present["audio"] | present["visual"],
                            self_logits={m: self.tables[m][rows] for m in MODS},
                            infiltration_logits={m: zeros for m in MODS}, paths={}, valid={"fused": both})


def pool() -> TrainPool:
    ids = torch.arange(8, dtype=torch.float32)[:, None]
    return TrainPool(inputs={m: ids for m in MODS},
                     present={"audio": torch.ones(8, dtype=torch.bool), "visual": torch.tensor(VISUAL_PRESENT)},
                     labels=torch.tensor(POOL_LABELS))


def prepared():
    """FedCMI and its round context for the client, with the hand-chosen temperatures T."""
    cmi = FedCMI(factory(), TrainConfig(batch_size=4), HPARAMS, CPU)   # 4 < 6 rows: teacher built in chunks
    ctx = cmi.prepare_round(RowTable(GLOBAL_SELF), {}, pool(), CLIENT_ROWS, client(CLIENT_ROWS), round_idx=1)
    ctx.temperatures = torch.tensor(T, dtype=torch.float32)
    return cmi, ctx


def batch_and_outputs(dominant: str):
    """The batch and a local forward pass whose logits are leaves (to read gradients)."""
    logits = local_logits(dominant)
    leaf = lambda x: torch.tensor(x, dtype=torch.float32, requires_grad=True)
    audio = torch.ones(5, dtype=torch.bool)
    both = torch.tensor(BOTH)
    outputs = ModelOutputs(routed=leaf(_NOISE["routed"]), routed_valid=audio,
                           self_logits={m: leaf(logits["self"][m]) for m in MODS},
                           infiltration_logits={m: leaf(logits["inf"][m]) for m in MODS},
                           paths={}, valid={"fused": both})
    batch = Batch(inputs={}, present={"audio": audio, "visual": both}, labels=torch.tensor(LABELS),
                  indices=torch.tensor(BATCH_ROWS))
    return batch, outputs


SCENARIOS = pytest.mark.parametrize("dominant", MODS)


def test_the_teacher_table_holds_the_global_self_logits_of_the_sorted_multimodal_rows():
    _, ctx = prepared()
    assert ctx.teacher_rows.tolist() == TEACHER_ROWS
    for m in MODS:
        assert np.allclose(ctx.teacher_logits[m].numpy(), GLOBAL_SELF[m][TEACHER_ROWS], atol=1e-6), m


@SCENARIOS
def test_the_dominant_modality_is_read_from_the_local_self_logits(dominant):
    logits = local_logits(dominant)
    rows = np.flatnonzero(BOTH)
    y = LABELS[BOTH]
    # the hand-made batch: the local self logits say `dominant`; infiltration logits and the
    # global model's self logits say the other modality in the "audio" scenario
    rho_self = np_rho(logits["self"]["audio"], logits["self"]["visual"], rows, y)
    rho_inf = np_rho(logits["inf"]["audio"], logits["inf"]["visual"], rows, y)
    assert (rho_self > 1) == (dominant == "audio") and (rho_inf > 1) != (rho_self > 1)
    cmi, ctx = prepared()
    batch, outputs = batch_and_outputs(dominant)
    _, weak = cmi.infiltration_term(outputs, batch, ctx)
    assert weak == expected(dominant)["weak"]


@SCENARIOS
def test_infiltration_loss_by_hand(dominant):
    cmi, ctx = prepared()
    batch, outputs = batch_and_outputs(dominant)
    loss, _ = cmi.infiltration_term(outputs, batch, ctx)
    assert float(loss.detach()) == pytest.approx(expected(dominant)["loss"], rel=1e-5)


@SCENARIOS
def test_the_gradient_reaches_only_the_weak_infiltration_logits_row_by_row(dominant):
    """d L_inf / d student_i = (softmax(student_i / t_i) − softmax(teacher_i / t_i)) / (t_i · n):
    it pins, per sample, the student tensor, the teacher's pool row and modality, and T[y_i]."""
    cmi, ctx = prepared()
    batch, outputs = batch_and_outputs(dominant)
    loss, _ = cmi.infiltration_term(outputs, batch, ctx)
    loss.backward()
    hand = expected(dominant)
    weak = hand["weak"]
    assert np.allclose(outputs.infiltration_logits[weak].grad.numpy(), hand["grad"], atol=1e-6)
    others = [outputs.routed, *outputs.self_logits.values()] + [
        outputs.infiltration_logits[m] for m in MODS if m != weak]
    assert all(t.grad is None or not t.grad.any() for t in others)


@SCENARIOS
def test_the_local_objective_by_hand(dominant):
    """(Σ_rows CE(routed) + λ1·Σ_multimodal [CE(self_A) + CE(self_B)]) / n + λ2·L_inf·n_multimodal / n."""
    cmi, ctx = prepared()
    batch, outputs = batch_and_outputs(dominant)
    hand = expected(dominant)
    self_logits = hand["logits"]["self"]
    shared = (np_ce_rows(_NOISE["routed"], LABELS).sum()
              + AUX * sum(np_ce_rows(self_logits[m][BOTH], LABELS[BOTH]).sum() for m in MODS)) / 5
    total = shared + INF * hand["loss"] * BOTH.sum() / 5
    assert float(cmi.local_loss(RowTable(GLOBAL_SELF), outputs, batch, ctx).detach()) == pytest.approx(total, rel=1e-5)
