"""FedCMI (Fan et al., arXiv 2401.00894): FedProx plus cross-modal infiltration with class-wise
temperatures. The definition followed here is ``shared/spec/fedcmi.md`` (two modalities A, B),
generalised to M >= 2 modalities (manifest order) as follows; with M = 2 every rule below is the
spec's, computed exactly as before.

- Infiltration (and the shared objective's λ1 term) applies to a client's multimodal rows: those
  with every modality the CLIENT holds (``FedAvg.complete_rows``), among those modalities; a
  client holding one modality, and rows lacking one of the client's modalities, train the shared
  objective only (as single-modality rows do with two modalities). So a three-modality run whose
  third modality is absent everywhere trains exactly the two-modality objective on A+B rows.
- Dominant modality of a batch (:func:`dominant_modality`): the modality with the largest score
  s_m = Σ_i softmax(C_m(S_m h_m))_i[y_i] (local model, the multimodal rows); ties go to the
  LATER modality in manifest order. It is computed as a left-to-right tournament of dominance
  ratios ρ(x, m) = s_x / max(s_m, PROB_EPS): the current winner x keeps its place against the next
  modality m only if ρ(x, m) > 1. With M = 2 that is the spec's rule exactly (ρ > 1 → A, else B:
  a tie goes to B), and for M > 2 it is the argmax with ties to the later modality.
- Teacher: the dominant modality d's self logits from the frozen global model (looked up by row).
  Students: EVERY other modality m, through its infiltration logits C_m(I_m h_m) (local model).
  L_inf = mean over the M − 1 students of the per-sample distillation loss (:func:`infiltration_loss`)
  of student m at per-sample temperature T^{d,m}[y_i]; with M = 2 the single term of the spec.
- Class-wise temperatures per unordered pair {i < j} of modalities (manifest order,
  :func:`modality_pairs`): T^{i,j} = ``class_temperatures(p_i, p_j)``, computed once per round per
  client from the global model's self-path probabilities over the client's rows with every
  modality (the teacher pass); student m under teacher d uses T^{d,m} = T^{min, max}. With M = 2
  the single pair's T (the spec's).
- ``metrics["temperatures"]``: with M = 2 the n_classes floats of T; with M > 2 the per-class mean
  over the pairs (n_classes floats, so the round logs and reports read it alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import Batch, ClientData, State, TrainPool
from pipelines.fl.fedprox import FedProx, FedProxHparams, ProxContext
from pipelines.fl.measures import PROB_EPS, dominance_ratio, ground_truth_probability  # noqa: F401  (re-exported)
from pipelines.models import ModelOutputs, MultimodalNet


@dataclass(frozen=True)
class FedCMIHparams(FedProxHparams):
    """FedCMI's hyperparameters.

    mu: μ of the proximal term (0.05, see below). infiltration_weight: λ2 (1.0). kappa: κ of the
    class-wise temperature (2.0). warmup_rounds: rounds (0-based index below it) without
    infiltration (1). λ2, κ and the warm-up are the authors' values. Ablations:
    uniform_temperature = τ sets T_c = τ for every class; infiltration = False drops L_inf;
    proximal = False sets μ = 0.

    μ is only meaningful together with the optimiser: each SGD step pulls the weights towards the
    global ones by lr·μ·(w − w_global), so what a given μ does scales with the learning rate. The
    authors use μ = 1 at lr = 1e-3 (a pull of 1e-3 per step); cmi's default lr is 0.02, where μ = 1
    pulls 20 times harder and dominated local training on a real dataset (fused accuracy 13 points
    below FedAvg). The default keeps the authors' lr·μ = 1e-3: μ = 0.05 at lr 0.02; when you change
    ``train.lr``, scale μ with it (μ = 1e-3 / lr). The README's sensitivity study has the figures."""

    mu: float = 0.05
    infiltration_weight: float = 1.0
    kappa: float = 2.0
    warmup_rounds: int = 1
    uniform_temperature: float | None = None
    infiltration: bool = True
    proximal: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.infiltration_weight < 0 or self.kappa < 0 or self.warmup_rounds < 0:
            raise CmiError(f"FedCMI needs infiltration_weight >= 0, kappa >= 0, warmup_rounds >= 0; got "
                           f"{self.infiltration_weight}, {self.kappa}, {self.warmup_rounds}.")
        if self.uniform_temperature is not None and not self.uniform_temperature > 0:
            raise CmiError(f"uniform_temperature must be > 0 (or unset for class-wise temperatures), "
                           f"got {self.uniform_temperature}.")


def class_temperatures(prob_a: Tensor, prob_b: Tensor, labels: Tensor, num_classes: int, kappa: float) -> Tensor:
    """Class-wise temperatures T (num_classes,) from per-sample ground-truth probabilities of the
    two self paths.

    P_m(c) = mean of prob_m over the class-c samples (non-finite probabilities count as 0; P
    clamped to [PROB_EPS, 1]); r_c = P_A(c) / P_B(c); r̄ = mean of r_c over the classes present.
    If r̄ > 1: T_c = 1 / (1 + κ·ln(r_c / r̄)) where r_c > r̄; otherwise T_c = 1 / (1 + κ·ln(r̄ / r_c))
    where r_c < r̄; every other class (and every absent class) has T_c = 1."""
    labels = labels.long()
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    means = []
    for prob in (prob_a, prob_b):
        prob = torch.nan_to_num(prob.double(), nan=0.0, posinf=1.0, neginf=0.0)
        sums = torch.bincount(labels, weights=prob, minlength=num_classes)
        means.append((sums / counts.clamp_min(1)).clamp(PROB_EPS, 1.0))
    ratio = means[0] / means[1]
    mean_ratio = ratio[present].mean() if bool(present.any()) else ratio.new_ones(())
    a_dominant = mean_ratio > 1
    sharpen = present & torch.where(a_dominant, ratio > mean_ratio, ratio < mean_ratio)
    gap = torch.where(a_dominant, torch.log(ratio / mean_ratio), torch.log(mean_ratio / ratio))
    return torch.where(sharpen, 1.0 / (1.0 + kappa * gap), 1.0).float()


def modality_pairs(count: int) -> list[tuple[int, int]]:
    """The unordered pairs {i < j} of ``count`` modalities (indices, manifest order), in the order
    their class-wise temperatures are kept: (0, 1), (0, 2), ..., (1, 2), ... One pair for two."""
    return list(combinations(range(count), 2))


def dominant_modality(self_logits: Sequence[Tensor], labels: Tensor) -> int:
    """Index (manifest order) of the dominant modality among M >= 2 modalities' self logits (each
    (n, C), the same rows) with ground truth ``labels``: the largest s_m = Σ_i softmax(logits_m)_i[y_i],
    ties to the later modality. A left-to-right tournament: the winner x (initially the first)
    keeps its place against modality m only if ρ(x, m) = s_x / max(s_m, PROB_EPS) > 1
    (:func:`dominance_ratio`'s arithmetic), else m takes it; with two modalities exactly
    "ρ > 1 → the first, else the second". One host synchronisation."""
    scores = torch.stack([ground_truth_probability(logits.detach(), labels).sum() for logits in self_logits])
    beats = (scores.unsqueeze(1) / scores.unsqueeze(0).clamp_min(PROB_EPS) > 1).tolist()   # beats[x][m]: ρ(x, m) > 1
    winner = 0
    for m in range(1, len(self_logits)):
        if not beats[winner][m]:
            winner = m
    return winner


def infiltration_loss(student: Tensor, teacher: Tensor, temperature: Tensor) -> Tensor:
    """mean_i( −Σ_k softmax(teacher_i / t_i)_k · log_softmax(student_i / t_i)_k ); t (n,) per sample;
    teacher detached; no T² factor."""
    t = temperature.unsqueeze(1)
    target = (teacher.detach() / t).softmax(dim=1)
    return -(target * (student / t).log_softmax(dim=1)).sum(dim=1).mean()


@dataclass
class FedCMIContext(ProxContext):
    """``pairs``: the pairs (i, j) of the modalities the client holds, manifest order.
    ``temperatures``: their class-wise temperatures, (n_classes,) for a single pair (two
    modalities), else (n_pairs, n_classes), row p for ``pairs[p]``. ``teacher_rows`` /
    ``teacher_logits``: the frozen global model's self logits for the client's rows with every
    modality it holds (sorted pool rows; m -> (n, n_classes)). All None / empty in rounds without
    infiltration."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    temperatures: Tensor | None = None
    teacher_rows: Tensor | None = None
    teacher_logits: dict[str, Tensor] | None = None


class FedCMI(FedProx):
    """FedProx (μ = 0.05 at lr 0.02, see FedCMIHparams) plus infiltration, exactly as the spec
    (for M > 2 modalities as generalised in the module docstring).

    Before local training, in rounds with infiltration (``round_idx >= warmup_rounds``), a client
    with multimodal samples (every modality it holds) evaluates the received global model (eval mode, no
    gradient) once over those samples (the samples infiltration applies to): the class-wise
    temperatures (one T per pair of modalities) come from those self-path probabilities, and the
    same self logits (every modality) are kept as the teacher logits. The teacher is the frozen
    global model in eval mode, so its logits for a sample are fixed for the whole round: looking
    them up is exactly a per-batch teacher forward, done once instead of every batch and epoch.

    Per batch, on the multimodal samples: the local model's self logits pick the dominant
    modality d (:func:`dominant_modality`; two modalities: ρ > 1 → the first); L_inf distils the
    global model's d self logits into the local model's infiltration logits of every other modality
    m at per-sample temperature T^{d,m}[y], averaged over those students; the objective adds
    λ2·L_inf·(share of the batch that is multimodal) (per-sample averaging as in FedAvg). Unimodal
    clients and samples lacking one of the client's modalities: the shared objective plus the proximal term.
    ``metrics["temperatures"]`` (n_classes floats; absent classes 1.0; with M > 2 the mean over the
    pairs) is reported by clients with such samples in rounds with infiltration."""

    name = "fedcmi"
    Hparams = FedCMIHparams
    Context = FedCMIContext

    @property
    def mu(self) -> float:
        return self.hparams.mu if self.hparams.proximal else 0.0

    def infiltration_active(self, round_idx: int) -> bool:
        return self.hparams.infiltration and round_idx >= self.hparams.warmup_rounds and len(self.modalities) >= 2

    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client: ClientData, round_idx: int, **plan) -> FedCMIContext:
        ctx = super().prepare_round(model, global_state, pool, rows, client, round_idx, **plan)
        if not self.infiltration_active(round_idx):
            return ctx
        mods = self.held_modalities(ctx)
        if len(mods) < 2:
            return ctx
        rows_t = torch.as_tensor(rows)
        complete = pool.present[mods[0]][rows_t]
        for m in mods[1:]:
            complete = complete & pool.present[m][rows_t]
        multimodal = np.sort(rows_t[complete].numpy())
        if multimodal.shape[0] == 0:
            return ctx
        model.eval()
        logits: dict[str, list[Tensor]] = {m: [] for m in mods}
        with torch.no_grad():
            for batch in pool.batches(multimodal, self.train.batch_size, None, shuffle=False, device=self.device):
                outputs = model(batch.inputs, batch.present)
                for m in mods:
                    logits[m].append(outputs.self_logits[m])
        ctx.teacher_logits = {m: torch.cat(chunks) for m, chunks in logits.items()}
        ctx.teacher_rows = torch.as_tensor(multimodal, device=self.device)
        labels = pool.labels[torch.as_tensor(multimodal)].to(self.device)
        ctx.pairs = [(mods[i], mods[j]) for i, j in modality_pairs(len(mods))]
        shape = (model.num_classes,) if len(ctx.pairs) == 1 else (len(ctx.pairs), model.num_classes)
        if self.hparams.uniform_temperature is not None:
            ctx.temperatures = torch.full(shape, float(self.hparams.uniform_temperature), device=self.device)
        else:
            probs = {m: ground_truth_probability(ctx.teacher_logits[m], labels) for m in mods}
            temps = [class_temperatures(probs[i], probs[j], labels, model.num_classes, self.hparams.kappa)
                     for i, j in ctx.pairs]
            ctx.temperatures = temps[0] if len(temps) == 1 else torch.stack(temps)
        reported = ctx.temperatures if ctx.temperatures.dim() == 1 else ctx.temperatures.mean(dim=0)
        ctx.metrics["temperatures"] = reported.tolist()
        return ctx

    def pair_temperatures(self, ctx: FedCMIContext, first: str, second: str) -> Tensor:
        """T^{first, second} (n_classes,): the class-wise temperatures of that pair of modalities."""
        pair = (first, second) if (first, second) in ctx.pairs else (second, first)
        return ctx.temperatures.reshape(-1, ctx.temperatures.shape[-1])[ctx.pairs.index(pair)]

    def infiltration_terms(self, outputs: ModelOutputs, batch: Batch,
                           ctx: FedCMIContext) -> tuple[Tensor, str, tuple[str, ...]]:
        """(L_inf over the batch's multimodal rows (``complete_rows``: every modality the client
        holds), the dominant modality d, the student modalities: every other held one, manifest
        order)."""
        complete = self.complete_rows(outputs, ctx)
        labels = batch.labels[complete]
        mods = self.held_modalities(ctx)
        dominant = mods[dominant_modality([outputs.self_logits[m][complete] for m in mods], labels)]
        teacher = ctx.teacher_logits[dominant][torch.searchsorted(ctx.teacher_rows, batch.indices[complete])]
        students = tuple(m for m in mods if m != dominant)
        terms = [infiltration_loss(outputs.infiltration_logits[m][complete], teacher,
                                   self.pair_temperatures(ctx, dominant, m)[labels]) for m in students]
        loss = terms[0] if len(terms) == 1 else torch.stack(terms).mean()
        return loss, dominant, students

    def infiltration_term(self, outputs: ModelOutputs, batch: Batch,
                          ctx: FedCMIContext) -> tuple[Tensor, str | tuple[str, ...]]:
        """L_inf over the batch's samples with every modality and the weak modality it was applied
        to (two modalities); with M > 2 the tuple of student modalities (manifest order)."""
        loss, _, students = self.infiltration_terms(outputs, batch, ctx)
        return loss, students[0] if len(students) == 1 else students

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: FedCMIContext) -> Tensor:
        loss = super().local_loss(model, outputs, batch, ctx)
        complete = self.complete_rows(outputs, ctx)
        if ctx.teacher_logits is None or complete is None or not bool(complete.any()):
            return loss
        inf, _, _ = self.infiltration_terms(outputs, batch, ctx)
        share = complete.sum() / outputs.routed_valid.sum()
        return loss + self.hparams.infiltration_weight * inf * share
