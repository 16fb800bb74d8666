"""MNL, multimodal negative learning (NeurIPS 2025), in federated form: every client lets the
modality that is ahead on a sample guide the other one's non-target classes; stateless across
rounds. Definition: ``shared/spec/methods.md``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientUpdate, FedAvg, FedAvgHparams, RoundContext, ServerState, State, TrainPool,
)
from pipelines.fl.measures import PROB_EPS, ground_truth_probability
from pipelines.models import ModelOutputs, MultimodalNet

#: the negative-learning term's forms (see :func:`negative_learning`)
FORMS = ("authors", "complement")


@dataclass(frozen=True)
class MNLHparams(FedAvgHparams):
    """aux_weight: weight of the self-classifier losses CE(z_A) + CE(z_B) (1.0 here, not the
    shared 2.0: MNL's objective is CE(z_F) + CE(z_A) + CE(z_B) + the term). weight: λ of the
    negative-learning term (0.7, the authors' ``weight1``). form: ``"authors"`` (their released
    script, the default) or ``"complement"`` (the abstract's suppression form), see
    :func:`negative_learning`. warmup_rounds: rounds (0-based index below it) trained with the
    CE terms only (1)."""

    aux_weight: float = 1.0
    weight: float = 0.7
    form: str = "authors"
    warmup_rounds: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight < 0:
            raise CmiError(f"mnl.weight must be >= 0, got {self.weight}.")
        if self.form not in FORMS:
            raise CmiError(f"mnl.form = {self.form!r} is not valid; choose one of {', '.join(FORMS)}.")
        if self.warmup_rounds < 0:
            raise CmiError(f"mnl.warmup_rounds must be >= 0, got {self.warmup_rounds}.")


def guidance(fused: Tensor, logits_a: Tensor, logits_b: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(A guides B, B guides A), two (n,) bool masks. j_i = the strongest wrong class of the fused
    logits (first one on a tie); margins ξ_m = z_m[y] − z_m[j]; A guides B where ξ_A > ξ_B and
    p_A[y] > p_B[y], B guides A where ξ_A ≤ ξ_B and p_A[y] ≤ p_B[y], neither elsewhere."""
    target = F.one_hot(labels, fused.shape[1]).bool()
    j = fused.detach().masked_fill(target, float("-inf")).argmax(dim=1, keepdim=True)
    y = labels.unsqueeze(1)
    xi_a = (logits_a.gather(1, y) - logits_a.gather(1, j)).squeeze(1).detach()
    xi_b = (logits_b.gather(1, y) - logits_b.gather(1, j)).squeeze(1).detach()
    p_a = ground_truth_probability(logits_a.detach(), labels)
    p_b = ground_truth_probability(logits_b.detach(), labels)
    return (xi_a > xi_b) & (p_a > p_b), (xi_a <= xi_b) & (p_a <= p_b)


def negative_learning(weak: Tensor, guide: Tensor, labels: Tensor, weight: float, form: str) -> Tensor:
    """Per-sample negative-learning term (n,) of the weak (guided) modality's logits ``weak`` under
    the guide's logits ``guide`` (its probabilities p_s detached), over the non-target classes
    c ≠ y; C = the number of classes.

    ``"authors"``, the form of the authors' released ``train_latefusion.py``: their B×C loss matrix
    −y·log p_w − λ·sg(p_s)·log p_w + λ·y·sg(p_s)·log p_w on the guided rows, averaged over all B×C
    entries, i.e. per sample [−log p_w[y] − λ·Σ_{c≠y} sg(p_s[c])·log p_w[c]] / C (the weak
    modality's target CE plus a cross-entropy towards the guide's non-target distribution, both
    divided by C; the caller takes the mean over the batch). It raises the weak modality's
    non-target probabilities where the guide's are high: a soft, guide-shaped label.

    ``"complement"``, the reading of the paper's abstract (the weak modality SUPPRESSES the
    non-target classes the guide finds likely): −λ·Σ_{c≠y} sg(p_s[c])·log(1 − p_w[c]), with
    log1p(−p) and p clamped to <= 1 − PROB_EPS; no target CE (the objective has CE(z_w) already)
    and no division by C."""
    nontarget = 1.0 - F.one_hot(labels, weak.shape[1]).to(weak.dtype)
    teacher = guide.detach().softmax(dim=1) * nontarget
    if form == "authors":
        log_p = weak.log_softmax(dim=1)
        target_ce = -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
        return (target_ce - weight * (teacher * log_p).sum(dim=1)) / weak.shape[1]
    if form == "complement":
        log_rest = torch.log1p(-weak.softmax(dim=1).clamp(max=1.0 - PROB_EPS))
        return -weight * (teacher * log_rest).sum(dim=1)
    raise ValueError(f"unknown negative-learning form {form!r}")


@dataclass
class MNLContext(RoundContext):
    """``guidance``: this client's counts so far [multimodal samples, A-guides-B samples,
    B-guides-A samples] over its steps after the warm-up (None until the first such batch)."""

    guidance: Tensor | None = None


class MNL(FedAvg):
    """The shared objective with λ1 = ``aux_weight`` = 1 (the spec's CE(z_F) + CE(z_A) + CE(z_B)
    on multimodal samples; one-modality samples keep their routed CE), plus, from round
    ``warmup_rounds`` on (round index counted from 0), the negative-learning term on the batch's
    multimodal samples: per sample :func:`guidance` decides (with the fused logits for j and the
    self classifiers' logits C_m(S_m h_m) as z_m) whether A guides B, B guides A or neither;
    a guided sample adds :func:`negative_learning` of the weak modality's self logits under the
    guide's, ``hparams.form`` deciding which form (default ``"authors"``, the released script's;
    ``"complement"``, the abstract's suppression). The term is summed over the guided samples and
    divided by the batch size (a per-sample mean). The guide's probabilities are detached and
    the guidance masks carry no gradient, so the term trains only the weak modality's classifier,
    projector and encoder. Warm-up rounds train exactly the shared objective.

    Stateless: the server aggregates as FedAvg. For the round's metrics the clients report how
    many multimodal samples were guided each way (``metrics["guidance"]``: [multimodal, A guides B,
    B guides A]) and the server keeps the round's totals (``server_state["guidance"]``, logging
    only: nothing is broadcast; ``server_metrics`` turns them into shares)."""

    name = "mnl"
    two_modalities = True
    Hparams = MNLHparams
    Context = MNLContext

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: MNLContext) -> Tensor:
        loss = super().local_loss(model, outputs, batch, ctx)
        complete = outputs.valid["fused"]
        if ctx.round_idx < self.hparams.warmup_rounds or not bool(complete.any()):
            return loss
        a, b = self.modalities
        labels = batch.labels[complete]
        z_a, z_b = outputs.self_logits[a][complete], outputs.self_logits[b][complete]
        a_guides_b, b_guides_a = guidance(outputs.routed[complete], z_a, z_b, labels)
        # both directions computed on every multimodal row, each kept where it applies (no data-dependent shapes)
        weak_b = negative_learning(z_b, z_a, labels, self.hparams.weight, self.hparams.form)
        weak_a = negative_learning(z_a, z_b, labels, self.hparams.weight, self.hparams.form)
        zero = weak_a.new_zeros(())
        term = torch.where(a_guides_b, weak_b, zero) + torch.where(b_guides_a, weak_a, zero)
        counts = torch.stack([complete.sum(), a_guides_b.sum(), b_guides_a.sum()])
        ctx.guidance = counts if ctx.guidance is None else ctx.guidance + counts
        return loss + term.sum() / outputs.routed_valid.sum()

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: MNLContext) -> None:
        if ctx.guidance is not None:
            ctx.metrics["guidance"] = [int(v) for v in ctx.guidance.tolist()]

    # ------------------------------------------------------------------ server (logging only)
    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        return {"guidance": torch.zeros(3, dtype=torch.float64)}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        counts = [u.metrics["guidance"] for u in updates if u.metrics.get("guidance") is not None]
        total = torch.tensor(counts, dtype=torch.float64).sum(dim=0) if counts else torch.zeros(3, dtype=torch.float64)
        return self.aggregate(global_state, updates), {**server_state, "guidance": total}

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        """``guided_share``: per modality m (model order), the share of the round's multimodal
        training samples on which m was the guided (weak) one, learning from the other; nothing in
        warm-up rounds."""
        rows, a_guides_b, b_guides_a = (float(v) for v in server_state.get("guidance", torch.zeros(3)))
        if rows <= 0:
            return {}
        return {"guided_share": [b_guides_a / rows, a_guides_b / rows]}
