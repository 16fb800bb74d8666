"""FedCMI (Fan et al., arXiv 2401.00894): FedProx plus cross-modal infiltration with class-wise
temperatures. The definition followed here is ``shared/spec/fedcmi.md``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import Batch, ClientData, State, TrainPool
from pipelines.fl.fedprox import FedProx, FedProxHparams, ProxContext
from pipelines.fl.measures import PROB_EPS, dominance_ratio, ground_truth_probability
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


def infiltration_loss(student: Tensor, teacher: Tensor, temperature: Tensor) -> Tensor:
    """mean_i( −Σ_k softmax(teacher_i / t_i)_k · log_softmax(student_i / t_i)_k ); t (n,) per sample;
    teacher detached; no T² factor."""
    t = temperature.unsqueeze(1)
    target = (teacher.detach() / t).softmax(dim=1)
    return -(target * (student / t).log_softmax(dim=1)).sum(dim=1).mean()


@dataclass
class FedCMIContext(ProxContext):
    """``temperatures``: the class-wise temperatures (n_classes,). ``teacher_rows`` /
    ``teacher_logits``: the frozen global model's self logits for the client's multimodal rows
    (sorted pool rows; m -> (n, n_classes)). All None in rounds without infiltration."""

    temperatures: Tensor | None = None
    teacher_rows: Tensor | None = None
    teacher_logits: dict[str, Tensor] | None = None


class FedCMI(FedProx):
    """FedProx (μ = 0.05 at lr 0.02, see FedCMIHparams) plus infiltration, exactly as the spec.

    Before local training, in rounds with infiltration (``round_idx >= warmup_rounds``), a client
    with multimodal samples evaluates the received global model (eval mode, no gradient) once over
    its samples that have both modalities (the samples infiltration applies to): the class-wise
    temperatures come from those self-path probabilities, and the same self logits are kept as the
    teacher logits. The teacher is the frozen global model in eval mode, so its logits for a sample
    are fixed for the whole round: looking them up is exactly a per-batch teacher forward, done
    once instead of every batch and epoch.

    Per batch, on the multimodal samples: ρ from the local model's self logits picks the dominant
    modality (ρ > 1: the first modality); L_inf distils the global model's dominant self logits into
    the local model's weak infiltration logits at per-sample temperature T[y]; the objective adds
    λ2·L_inf (per-sample averaging as in FedAvg). Unimodal clients and single-modality samples: the
    shared objective plus the proximal term. ``metrics["temperatures"]`` (n_classes floats; absent
    classes 1.0) is reported by clients with multimodal samples in rounds with infiltration."""

    name = "fedcmi"
    Hparams = FedCMIHparams
    Context = FedCMIContext

    @property
    def mu(self) -> float:
        return self.hparams.mu if self.hparams.proximal else 0.0

    def infiltration_active(self, round_idx: int) -> bool:
        return self.hparams.infiltration and round_idx >= self.hparams.warmup_rounds and len(self.modalities) == 2

    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client: ClientData, round_idx: int, **plan) -> FedCMIContext:
        ctx = super().prepare_round(model, global_state, pool, rows, client, round_idx, **plan)
        if not self.infiltration_active(round_idx):
            return ctx
        a, b = self.modalities
        rows_t = torch.as_tensor(rows)
        multimodal = np.sort(rows_t[pool.present[a][rows_t] & pool.present[b][rows_t]].numpy())
        if multimodal.shape[0] == 0:
            return ctx
        model.eval()
        logits: dict[str, list[Tensor]] = {a: [], b: []}
        with torch.no_grad():
            for batch in pool.batches(multimodal, self.train.batch_size, None, shuffle=False, device=self.device):
                outputs = model(batch.inputs, batch.present)
                for m in (a, b):
                    logits[m].append(outputs.self_logits[m])
        ctx.teacher_logits = {m: torch.cat(chunks) for m, chunks in logits.items()}
        ctx.teacher_rows = torch.as_tensor(multimodal, device=self.device)
        labels = pool.labels[torch.as_tensor(multimodal)].to(self.device)
        if self.hparams.uniform_temperature is not None:
            ctx.temperatures = torch.full((model.num_classes,), float(self.hparams.uniform_temperature), device=self.device)
        else:
            prob_a, prob_b = (ground_truth_probability(ctx.teacher_logits[m], labels) for m in (a, b))
            ctx.temperatures = class_temperatures(prob_a, prob_b, labels, model.num_classes, self.hparams.kappa)
        ctx.metrics["temperatures"] = ctx.temperatures.tolist()
        return ctx

    def infiltration_term(self, outputs: ModelOutputs, batch: Batch, ctx: FedCMIContext) -> tuple[Tensor, str]:
        """L_inf over the batch's multimodal samples and the weak modality it was applied to."""
        complete = outputs.valid["fused"]
        labels = batch.labels[complete]
        a, b = self.modalities
        rho = dominance_ratio(outputs.self_logits[a][complete].detach(), outputs.self_logits[b][complete].detach(), labels)
        dominant, weak = (a, b) if bool(rho > 1) else (b, a)
        teacher = ctx.teacher_logits[dominant][torch.searchsorted(ctx.teacher_rows, batch.indices[complete])]
        student = outputs.infiltration_logits[weak][complete]
        return infiltration_loss(student, teacher, ctx.temperatures[labels]), weak

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: FedCMIContext) -> Tensor:
        loss = super().local_loss(model, outputs, batch, ctx)
        complete = outputs.valid.get("fused")
        if ctx.teacher_logits is None or not bool(complete.any()):
            return loss
        inf, _ = self.infiltration_term(outputs, batch, ctx)
        share = complete.sum() / outputs.routed_valid.sum()
        return loss + self.hparams.infiltration_weight * inf * share
