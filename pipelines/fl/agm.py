"""AGM, adaptive gradient modulation (Li, Li, Hu, Yang, Wang, Yang; ICCV 2023, "Boosting
Multi-modal Model Performance with Adaptive Gradient Modulation"), in federated form: every client
modulates the gradients into each modality's Shapley contribution to the fused logits, with a
running mean of the contributions' losses kept as its client state. Definition:
``shared/spec/methods.md``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientUpdate, FedAvg, FedAvgHparams, ModalityRoundMean, RoundContext, State, TrainPool,
    weighted_mean,
)
from pipelines.models import ModelOutputs, MultimodalNet

#: the exponent's clamp: k_m = exp(α·min(r̄_m − r_m, CLAMP))
CLAMP = 10.0
#: a contribution's ground-truth probability is clamped to >= PROB_FLOOR before its log (authors' 1e-8)
PROB_FLOOR = 1e-8


@dataclass(frozen=True)
class AGMHparams(FedAvgHparams):
    """alpha: α of k_m = exp(α·min(r̄_m − r_m, 10)) (1.0; at most 50 so that exp(10·α) stays finite;
    0 turns the modulation off)."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 50:
            raise CmiError(f"agm.alpha must be in [0, 50], got {self.alpha}.")


@dataclass
class AGMContext(RoundContext):
    """``score_mean`` (2,) float64 on the training device: the running means s̄_A, s̄_B of the
    contributions' losses, and ``steps`` the number of steps they average (from the client state;
    (0, 0) and 0 the first time). ``k_sum`` (2,) float64 on the device / ``modulated``: the sum of
    (k_A, k_B) over this update's modulated steps and their number. Kept on the device so that a
    step adds no host sync; read once, in ``finish_client``."""

    score_mean: Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    steps: int = 0
    k_sum: Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    modulated: int = 0


def shapley_contributions(fusion: Callable[[Tensor, Tensor], Tensor], u_a: Tensor, u_b: Tensor,
                          fused: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(f(0,0), φ_A, φ_B) of the two-player game v(S) = f(slots of S kept, the others zero):
    φ_A = ½[(f(A,B) − f(0,B)) + (f(A,0) − f(0,0))], φ_B = ½[(f(A,B) − f(A,0)) + (f(0,B) − f(0,0))],
    so f(0,0) + φ_A + φ_B = f(A,B). The three passes with a zeroed slot run as one call of
    ``fusion`` on 3n rows; ``fused`` = f(A,B) when already computed (else a fourth call)."""
    n = u_a.shape[0]
    zero_a, zero_b = torch.zeros_like(u_a), torch.zeros_like(u_b)
    f_a0, f_0b, f_00 = fusion(torch.cat([u_a, zero_a, zero_a]), torch.cat([zero_b, u_b, zero_b])).split(n)
    if fused is None:
        fused = fusion(u_a, u_b)
    phi_a = 0.5 * ((fused - f_0b) + (f_a0 - f_00))
    phi_b = 0.5 * ((fused - f_a0) + (f_0b - f_00))
    return f_00, phi_a, phi_b


def contribution_score(logits: Tensor, labels: Tensor) -> Tensor:
    """s = mean_i −log max(softmax(logits)_i[y_i], 1e-8) (0-d): the loss of a contribution."""
    p = logits.softmax(dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return -p.clamp_min(PROB_FLOOR).log().mean()


def ratios(scores: Tensor) -> Tensor:
    """(r_A, r_B) = (exp(s_B − s_A), exp(s_A − s_B)) from ``scores`` (s_A, s_B): > 1 for the
    modality with the lower loss."""
    return (scores.flip(0) - scores).exp()


def coefficients(r: Tensor, r_bar: Tensor, alpha: float) -> Tensor:
    """k = exp(α·min(r̄ − r, 10)), elementwise."""
    return (alpha * (r_bar - r).clamp_max(CLAMP)).exp()


class AGM(ModalityRoundMean, FedAvg):
    """AGM on the fusion head, two modalities, any fusion head.

    Per step, on the batch's multimodal rows, with u_m = S_m h_m (``outputs.features``) and the
    fusion head f: the four coalitions f(A,B) (the model's fused logits), f(A,0), f(0,B), f(0,0)
    (``model.fusion`` with the absent slot ZERO; one extra call on 3n rows) give the Shapley
    contributions φ_A, φ_B of :func:`shapley_contributions`, f(0,0) + φ_A + φ_B = f(A,B).

    Scores: each modality's share of the logits ψ_m = φ_m + ½f(0,0) (ψ_A + ψ_B = f(A,B); the
    authors' ``out_a = ½(total − pad_audio + pad_visual)``; for concat fusion ψ_m = W_m u_m + b/2,
    the head's ``slices``) gives the contribution's loss s_m = mean_i −log max(softmax(ψ_m)_i[y_i],
    1e-8) over the multimodal rows. r_A = exp(s_B − s_A), r_B = exp(s_A − s_B) (:func:`ratios`);
    r̄_m the same of the running means s̄_A, s̄_B; k_m = exp(α·min(r̄_m − r_m, 10))
    (:func:`coefficients`): a modality further ahead of the other now (r_m) than on average
    (r̄_m) is slowed down (k < 1), one further behind is sped up (k > 1), at most e^{10α}.
    Running mean, after k is computed (the authors' order): t ← t + 1, s̄_m ← s̄_m·(t−1)/t + s_m/t,
    i.e. the cumulative mean of s_m over every modulated step of this client since its first
    participation (the authors' mean over all iterations of the run). It is the client's state
    (``client_state`` {"score_mean": (2,) float64 [s̄_A, s̄_B], "steps": (1,) int64 [t]}), carried
    by the engine between the client's participations; the first time s̄ = (0, 0), so r̄ = (1, 1).

    Modulation: the fused logits of those rows become z = f(A,B) + (k_A − 1)·(φ_A − sg(φ_A))
    + (k_B − 1)·(φ_B − sg(φ_B)); the added terms are exactly zero, so z equals f(A,B) bit for bit
    (the loss is FedAvg's), while ∂z = ∂f(0,0) + k_A·∂φ_A + k_B·∂φ_B: gradients into each
    modality's contribution are scaled by its k, the empty coalition's (fusion bias only) is not.
    With an additive head (concat, sum) φ_m depends on u_m alone, so the gradient of the fused CE
    into u_m, hence into E_m and S_m, is exactly k_m times FedAvg's. The loss is otherwise the
    shared objective (λ1·Σ_m CE(self_m) unmodulated; ``aux_weight = 0`` gives the paper's bare
    CE(z_F)); single-modality rows take their <m>_only path unmodulated; a batch without
    multimodal rows is not modulated and does not move the running mean.

    Passes at the fusion head, not at the input: nothing in the spec needs the encoders to run on
    zero inputs (E_m(0) ≠ 0 through biases and BatchNorm, whose batch statistics all-zero batches
    would also disturb), and the zero slot is this repository's convention for an absent modality.
    Cost: the encoders run once, only the small fusion head three more times, so a step costs
    about FedAvg's (not the 3-4× of the authors' input-level passes; measured ≈1.1× on the tests'
    tiny model, CPU); the bookkeeping stays on the device, so a step adds no host sync.

    Reported: ``metrics["agm_k"]`` [mean k_A, mean k_B] over the update's modulated steps and
    ``metrics["agm_steps"]`` their number. Server state ``k_mean`` (2,): the round's mean k per
    modality over all its modulated steps (clients weighted by their step counts; NaN when none),
    logged by ``server_metrics`` as ``k_<A>`` / ``k_<B>`` (None then). Aggregation: modality-wise
    FedAvg.

    Not reproduced from the authors' code: in one released AV variant the three padded passes run
    under ``no_grad``, which reduces the modulation to scaling the whole fused gradient by
    (k_A + k_B)/2; their gradient clipping and modulation start/end epochs are not in the spec."""

    name = "agm"
    round_mean_key, metric_prefix = "k_mean", "k"
    two_modalities = True
    Hparams = AGMHparams
    Context = AGMContext

    # ------------------------------------------------------------------ client
    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client, round_idx: int, **plan) -> AGMContext:
        ctx = super().prepare_round(model, global_state, pool, rows, client, round_idx, **plan)
        ctx.score_mean = ctx.score_mean.to(self.device)
        ctx.k_sum = ctx.k_sum.to(self.device)
        if ctx.client_state is not None:
            ctx.score_mean = ctx.client_state["score_mean"].to(self.device, torch.float64)
            ctx.steps = int(ctx.client_state["steps"].reshape(-1)[0])      # kept on the CPU: no sync
        return ctx

    def modulation(self, ctx: AGMContext, scores: Tensor) -> Tensor:
        """(k_A, k_B) (2,) for this step's contribution losses ``scores`` (s_A, s_B) (2,) float64,
        from the running means so far; then the running means take them (t ← t + 1,
        s̄ ← s̄·(t−1)/t + s/t). Device tensors throughout: no host sync."""
        k = coefficients(ratios(scores), ratios(ctx.score_mean), self.hparams.alpha)
        ctx.steps += 1
        t = ctx.steps
        ctx.score_mean = ctx.score_mean * ((t - 1) / t) + scores / t
        ctx.k_sum = ctx.k_sum + k
        ctx.modulated += 1
        return k

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: AGMContext) -> Tensor:
        complete = outputs.valid["fused"]
        if not bool(complete.any()):
            return super().local_loss(model, outputs, batch, ctx)
        a, b = self.modalities
        fused = outputs.paths["fused"][complete]
        f_00, phi_a, phi_b = shapley_contributions(model.fusion, outputs.features[a][complete],
                                                   outputs.features[b][complete], fused)
        labels = batch.labels[complete]
        with torch.no_grad():
            half = 0.5 * f_00
            scores = torch.stack([contribution_score(phi_a + half, labels), contribution_score(phi_b + half, labels)])
        k = (self.modulation(ctx, scores.double()) - 1).to(fused.dtype)
        z = fused + k[0] * (phi_a - phi_a.detach()) + k[1] * (phi_b - phi_b.detach())
        routed = outputs.routed.index_put((complete,), z)
        return super().local_loss(model, dataclasses.replace(outputs, routed=routed), batch, ctx)

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: AGMContext) -> None:
        if not ctx.modulated:
            return
        ctx.metrics["agm_k"] = (ctx.k_sum / ctx.modulated).tolist()
        ctx.metrics["agm_steps"] = ctx.modulated
        ctx.client_state = {"score_mean": ctx.score_mean.cpu(),
                            "steps": torch.tensor([ctx.steps], dtype=torch.int64)}

    def round_mean(self, updates: list[ClientUpdate]) -> Tensor:
        """(k_A, k_B) averaged over every modulated step of the round (each update's mean weighted by
        its ``agm_steps``)."""
        return weighted_mean(((u.metrics["agm_steps"], u.metrics["agm_k"]) for u in updates
                              if u.metrics.get("agm_steps")), len(self.modalities))
