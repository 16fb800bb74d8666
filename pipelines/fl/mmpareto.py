"""MMPareto, boosting multimodal learning with innocent unimodal assistance (Wei and Hu, ICML
2024), in federated form: every client combines, per encoder, the gradients of the fused and of
the unimodal loss into a Pareto direction; stateless. Definition: ``shared/spec/methods.md``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientUpdate, FedAvg, FedAvgHparams, RoundContext, ServerState, State, TrainPool,
)
from pipelines.models import ModelOutputs, MultimodalNet


@dataclass(frozen=True)
class MMParetoHparams(FedAvgHparams):
    """aux_weight: weight of the unimodal losses CE(z_A) + CE(z_B) (1.0 here, not the shared 2.0:
    MMPareto's objective is L_F + L_A + L_B; must be > 0, as the method balances the fused loss
    against the unimodal ones). gamma: γ, the factor on the rescaled encoder gradient (1.5, the
    authors')."""

    aux_weight: float = 1.0
    gamma: float = 1.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.aux_weight > 0:
            raise CmiError(f"mmpareto.aux_weight must be > 0 (the unimodal losses are what MMPareto balances), "
                           f"got {self.aux_weight}.")
        if not self.gamma > 0:
            raise CmiError(f"mmpareto.gamma must be > 0, got {self.gamma}.")


def min_norm_weight(n11: Tensor, n12: Tensor, n22: Tensor) -> Tensor:
    """MGDA for two vectors: the weight w on g1 of the minimum-norm point w·g1 + (1 − w)·g2 of
    their segment, from the Gram entries n11 = ‖g1‖², n12 = g1·g2, n22 = ‖g2‖².

    ‖g2 + w·(g1 − g2)‖² is a parabola in w with derivative 2·(g1 − g2)·(g2 + w·(g1 − g2)); it
    vanishes at w* = (g2 − g1)·g2 / ‖g1 − g2‖² = (n22 − n12) / (n11 + n22 − 2·n12), and the
    constrained minimum is w* clamped to [0, 1] (identical vectors: w = ½). When n12 <= 0 (the
    case MMPareto uses it for) w* already lies in [0, 1]: n22 − n12 >= 0 and n11 − n12 >= 0."""
    denominator = n11 + n22 - 2 * n12
    w = (n22 - n12) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, w.clamp(0.0, 1.0), torch.full_like(w, 0.5))


class ParetoStep(NamedTuple):
    """One encoder's combination: new gradient = c1·g1 + c2·g2; ``weight`` w on g1 (before the
    rescaling), ``cosine`` cos(g1, g2) (0 when a vector is zero), ``conflict`` whether MGDA's
    weights were used (both vectors non-zero, cosine <= 0). 0-d float64 / bool tensors."""

    c1: Tensor
    c2: Tensor
    weight: Tensor
    cosine: Tensor
    conflict: Tensor


def pareto_coefficients(n11: Tensor, n12: Tensor, n22: Tensor, gamma: float) -> ParetoStep:
    """MMPareto's encoder gradient c1·g1 + c2·g2 for g1 = ∇L_F and g2 = ∇L_m over one encoder, from
    the Gram entries of :func:`min_norm_weight`.

    Weights (w, 1 − w): (½, ½) when the cosine n12 / (‖g1‖·‖g2‖) is positive or either vector is
    zero (nothing to conflict with), else MGDA's :func:`min_norm_weight`. The combination
    d = w·g1 + (1 − w)·g2 is rescaled to the norm of the summed gradient g1 + g2, times γ:
    (c1, c2) = γ·‖g1 + g2‖ / ‖d‖ · (w, 1 − w), so (½, ½) gives γ·(g1 + g2); d = 0 (g1, g2 opposite
    with 0 on their segment: a Pareto-stationary point) gives c1 = c2 = 0. No host
    synchronisation."""
    n11, n12, n22 = (torch.as_tensor(n, dtype=torch.float64) for n in (n11, n12, n22))
    nonzero = (n11 > 0) & (n22 > 0)
    cosine = torch.where(nonzero, n12 / (n11 * n22).clamp_min(1e-300).sqrt(), torch.zeros_like(n12))
    conflict = nonzero & (n12 <= 0)
    w = torch.where(conflict, min_norm_weight(n11, n12, n22), torch.full_like(n12, 0.5))
    combined = (w * w * n11 + 2 * w * (1 - w) * n12 + (1 - w) * (1 - w) * n22).clamp_min(0).sqrt()
    summed = (n11 + 2 * n12 + n22).clamp_min(0).sqrt()
    positive = combined > 0
    scale = torch.where(positive, gamma * summed / torch.where(positive, combined, torch.ones_like(combined)),
                        torch.zeros_like(combined))
    return ParetoStep(scale * w, scale * (1 - w), w, cosine, conflict)


def _dot(xs: Sequence[Tensor | None], ys: Sequence[Tensor | None]) -> Tensor:
    """Σ over the tensors both lists have of x·y, in float64 (a missing tensor is zero)."""
    terms = [torch.dot(x.flatten(), y.flatten()).double() for x, y in zip(xs, ys) if x is not None and y is not None]
    if terms:
        return torch.stack(terms).sum()
    device = next((t.device for t in (*xs, *ys) if t is not None), None)
    return torch.zeros((), dtype=torch.float64, device=device)


def combine_gradients(g1: Sequence[Tensor | None], g2: Sequence[Tensor | None], gamma: float
                      ) -> tuple[list[Tensor | None], ParetoStep]:
    """(new gradients, the step's :class:`ParetoStep`) for one encoder whose parameters' gradients
    of L_F are ``g1`` and of L_m ``g2`` (None: the loss does not reach that parameter): the encoder
    is one vector (the concatenation of its parameters) for the cosine, the weights and the norms
    (:func:`pareto_coefficients`); each parameter's new gradient is c1·g1_p + c2·g2_p (None where
    both are None)."""
    step = pareto_coefficients(_dot(g1, g1), _dot(g1, g2), _dot(g2, g2), gamma)
    new: list[Tensor | None] = []
    for x, y in zip(g1, g2):
        if x is None and y is None:
            new.append(None)
        elif y is None:
            new.append(step.c1.to(x.dtype) * x)
        elif x is None:
            new.append(step.c2.to(y.dtype) * y)
        else:
            new.append(step.c1.to(x.dtype) * x + step.c2.to(y.dtype) * y)
    return new, step


@dataclass
class MMParetoContext(RoundContext):
    """``pending``: the current step's per-loss encoder gradients, m -> (∇L_F, ∇L_m) per encoder
    parameter, from ``local_loss`` to ``after_backward``; ``stats``: (M, 3) running [steps
    combined, steps with MGDA weights (conflict), Σ cosine] per modality (None before the
    first combined step)."""

    pending: dict[str, tuple[tuple[Tensor | None, ...], tuple[Tensor | None, ...]]] | None = None
    stats: Tensor | None = field(default=None)


class MMPareto(FedAvg):
    """The shared objective with λ1 = ``aux_weight`` = 1, written as L = L_F + L_A + L_B: L_F the
    routed CE (the fused head's CE on multimodal samples, the <m>_only path's on one-modality
    samples), L_m = λ1·CE(C_m(S_m h_m)) on multimodal samples (the self classifier's CE), each
    summed over its samples and divided by the batch size as every term.

    Per batch with multimodal samples, ``local_loss`` takes g1 = ∇L_F and g2 = ∇L_m over each
    encoder group's parameters (E_m, S_m, I_m) with ``torch.autograd.grad`` (graph retained),
    ``loss.backward()`` then gives every parameter the gradient of L, and ``after_backward``
    replaces each encoder group's gradient by :func:`combine_gradients`: (½, ½) when cos(g1, g2) > 0,
    MGDA's min-norm weights otherwise, rescaled to ‖g1 + g2‖ (the encoder's gradient of L), times γ.
    Classifier and fusion gradients keep the normal gradient of L; a batch without multimodal
    samples is not modified (L_m = 0 there). Cost: two extra backward passes per step (≈3×).

    Differences from the authors' script (``MMPareto.py``), stated: there the rescaling is per
    parameter tensor and only upwards (factor max(1, ‖g1 + g2‖_p / ‖2·d‖_p)); here it is per encoder,
    the vector the cosine and weights are computed on, so the MGDA direction is kept. Over the
    whole encoder ‖2·d‖ <= ‖g1 + g2‖ always (d is the segment's min-norm point, at most ‖midpoint‖),
    so "only upwards" is no restriction at that level. A zero g1 or g2 gets (½, ½) (the script
    would divide by zero), and d = 0 gives a zero encoder gradient (the script: NaN).

    Stateless for training; for the round's metrics each client reports its combined steps,
    conflict steps and summed cosines per modality (``metrics["pareto"]``) and the server keeps
    the round's totals (``server_state["pareto"]``, logging only: nothing is broadcast)."""

    name = "mmpareto"
    two_modalities = True
    Hparams = MMParetoHparams
    Context = MMParetoContext

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoder_params = {m: [p for name, p in self.model.named_parameters()
                                   if p.requires_grad and self.param_groups[name] == f"{m}.encoder"]
                               for m in self.modalities}

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: MMParetoContext) -> Tensor:
        ctx.pending = None
        valid = outputs.routed_valid
        batch_size = valid.sum()
        fused = F.cross_entropy(outputs.routed[valid], batch.labels[valid], reduction="sum") / batch_size
        complete = outputs.valid["fused"]
        if not bool(complete.any()):
            return fused
        labels = batch.labels[complete]
        unimodal = sum(F.cross_entropy(outputs.self_logits[m][complete], labels, reduction="sum")
                       for m in self.modalities) * self.hparams.aux_weight / batch_size
        loss = fused + unimodal
        if torch.is_grad_enabled() and loss.requires_grad:
            params = [p for m in self.modalities for p in self.encoder_params[m]]
            # L_A reaches only A's encoder and L_B only B's: one pass gives both unimodal gradients
            g_fused = torch.autograd.grad(fused, params, retain_graph=True, allow_unused=True)
            g_uni = torch.autograd.grad(unimodal, params, retain_graph=True, allow_unused=True)
            ctx.pending, start = {}, 0
            for m in self.modalities:
                end = start + len(self.encoder_params[m])
                ctx.pending[m] = (g_fused[start:end], g_uni[start:end])
                start = end
        return loss

    @torch.no_grad()
    def after_backward(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: MMParetoContext,
                       step: int, generator: torch.Generator) -> None:
        pending, ctx.pending = ctx.pending, None
        if pending is None:
            return
        rows = []
        for m in self.modalities:
            g1, g2 = pending[m]
            new, combined = combine_gradients(g1, g2, self.hparams.gamma)
            for p, g in zip(self.encoder_params[m], new):
                if p.grad is not None and g is not None:
                    p.grad.copy_(g)
            cosine = combined.cosine
            rows.append(torch.stack([torch.ones_like(cosine), combined.conflict.to(cosine.dtype), cosine]))
        stats = torch.stack(rows)
        ctx.stats = stats if ctx.stats is None else ctx.stats + stats

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: MMParetoContext) -> None:
        if ctx.stats is not None:
            ctx.metrics["pareto"] = ctx.stats.tolist()

    # ------------------------------------------------------------------ server (logging only)
    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        return {"pareto": torch.zeros((len(self.modalities), 3), dtype=torch.float64)}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        total = torch.zeros((len(self.modalities), 3), dtype=torch.float64)
        for u in updates:
            if u.metrics.get("pareto") is not None:
                total += torch.tensor(u.metrics["pareto"], dtype=torch.float64)
        return self.aggregate(global_state, updates), {**server_state, "pareto": total}

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        """Per modality (model order) over the round's combined steps: ``conflict_share``, the share
        of steps with cos(∇L_F, ∇L_m) <= 0 between non-zero gradients (MGDA's weights used), and
        ``mean_cosine``; nothing when no step was combined."""
        stats = server_state.get("pareto")
        if stats is None or not bool((stats[:, 0] > 0).all()):
            return {}
        steps, conflicts, cosines = stats.T.tolist()
        return {"conflict_share": [c / n for c, n in zip(conflicts, steps)],
                "mean_cosine": [c / n for c, n in zip(cosines, steps)]}
