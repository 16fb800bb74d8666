"""ARM, the auxiliary-information regularised machine (Yang, Ye, Zhan, Jiang; IJCAI 2015), as a
neural, federated RECONSTRUCTION: the paper's body was not available, only its abstract. The
definition followed is ``shared/spec/methods.md`` ("ARM")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientData, ClientUpdate, FedAvg, FedAvgHparams, RoundContext, ServerState, State, TrainPool,
)
from pipelines.models import ModelConfig, ModelOutputs, MultimodalNet
from pipelines.models.net import initialize
from pipelines.shards import ModalitySpec


@dataclass(frozen=True)
class ARMHparams(FedAvgHparams):
    """warmup_rounds: rounds trained with the shared objective only; W/S is first decided from the
    evaluation of round ``warmup_rounds`` (1-based; >= 1: the decision needs an evaluated global
    model). proj_dim: k, rows of the projections P and Q (64; at most model.embed_dim, so that k
    rows can be orthonormal). nu: ν, weight of the orthonormality penalty ‖PPᵀ − I‖² (1e-3).
    mu: μ, weight of the alignment + distillation regulariser (1.0). tau: τ, distillation
    temperature (2.0). All from the spec, which marks them as a reconstruction."""

    warmup_rounds: int = 1
    proj_dim: int = 64
    nu: float = 1e-3
    mu: float = 1.0
    tau: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_rounds < 1:
            raise CmiError(f"arm.warmup_rounds must be >= 1 (W/S is decided from an evaluated round), "
                           f"got {self.warmup_rounds}.")
        if self.proj_dim < 1:
            raise CmiError(f"arm.proj_dim must be >= 1, got {self.proj_dim}.")
        if self.nu < 0:
            raise CmiError(f"arm.nu must be >= 0, got {self.nu}.")
        if self.mu < 0:
            raise CmiError(f"arm.mu must be >= 0, got {self.mu}.")
        if not self.tau > 0:
            raise CmiError(f"arm.tau must be > 0, got {self.tau}.")


class ARMNet(MultimodalNet):
    """MultimodalNet plus, per modality m, a projection ``arm_projection[m]`` (k×d, no bias: the
    matrix P or Q) on u_m = S_m h_m and a classifier ``arm_classifier[m]`` (k → C) on the
    projected feature. Which modality's projection is P (trained, feeds its classifier) and which
    is Q (a fixed target) is decided each round by the server's W/S, so both exist. The forward
    pass is MultimodalNet's (the new modules are used by the loss only, from
    ``outputs.features``). Parameter groups: a projection joins ``"<m>.encoder"`` (with S_m, I_m),
    its classifier ``"<m>.classifier"`` (with C_m)."""

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: ModelConfig, proj_dim: int):
        super().__init__(specs, num_classes, cfg)
        # registered after the base modules: ``initialize`` draws the base weights exactly as build_model
        self.arm_projection = nn.ModuleDict({m: nn.Linear(cfg.embed_dim, proj_dim, bias=False) for m in self.modalities})
        self.arm_classifier = nn.ModuleDict({m: nn.Linear(proj_dim, num_classes) for m in self.modalities})

    def parameter_groups(self) -> dict[str, list[str]]:
        groups = {group: [k for k in keys if not k.startswith(("arm_projection.", "arm_classifier."))]
                  for group, keys in super().parameter_groups().items()}
        for key in self.state_dict():
            top, rest = key.split(".", 1)
            if top in ("arm_projection", "arm_classifier"):
                m = rest.split(".", 1)[0]
                groups[f"{m}.encoder" if top == "arm_projection" else f"{m}.classifier"].append(key)
        return groups


def orthonormality_penalty(p: Tensor) -> Tensor:
    """‖PPᵀ − I_k‖²_F for P (k, d): the sum of the squared entries of PPᵀ − I (0 iff P's rows are
    orthonormal)."""
    eye = torch.eye(p.shape[0], device=p.device, dtype=p.dtype)
    return ((p @ p.T - eye) ** 2).sum()


def alignment_sum(projected_weak: Tensor, projected_strong: Tensor) -> Tensor:
    """Σ_i ‖P u_W,i − sg(Q u_S,i)‖²₂ over the rows (squared Euclidean distance in R^k, summed over
    the k coordinates and over the rows; the caller divides by the batch size). The second
    argument is detached here as well."""
    return ((projected_weak - projected_strong.detach()) ** 2).sum()


def distillation_sum(weak_logits: Tensor, strong_logits: Tensor, tau: float) -> Tensor:
    """Σ_i KL(sg(p_S,i^τ) ‖ p_W,i^τ) = Σ_i Σ_c p_S,ic^τ (log p_S,ic^τ − log p_W,ic^τ), with
    p^τ = softmax(logits / τ): the strong modality's probabilities are the (detached) target, the
    weak one's the prediction (Hinton's distillation direction). Without the τ² factor, summed over
    the rows."""
    log_target = F.log_softmax(strong_logits.detach() / tau, dim=1)
    log_pred = F.log_softmax(weak_logits / tau, dim=1)
    return (log_target.exp() * (log_target - log_pred)).sum()


@dataclass
class ARMContext(RoundContext):
    """``weak`` / ``strong``: the modalities W and S the server broadcast this round (None during
    warm-up). ``align`` / ``kl`` / ``pairs``: running sums of the alignment distance and of the KL
    (per multimodal sample, before weighting) and the number of multimodal samples they cover, for
    the client's metrics."""

    weak: str | None = None
    strong: str | None = None
    align: Tensor | None = None
    kl: Tensor | None = None
    pairs: int = 0


class ARM(FedAvg):
    """ARM, a NEURAL RECONSTRUCTION (the IJCAI'15 paper's body was not available; only its
    abstract: "extract the weak modality's most discriminative subspace while the strong modality
    regularises it"). Two modalities only.

    Server. State: ``weak`` (0-d int64: index of W in the model's modality order, −1 = not yet
    decided), ``switches`` (how often W changed) and, for logging only, ``align`` / ``kl`` (the
    round's sample-weighted mean alignment distance and KL per multimodal sample, NaN when none).
    ``observe_evaluation`` reads each evaluated round's ``val.accuracy["<m>_self"]`` (the global
    model's self-path validation accuracies) from round ``warmup_rounds`` (1-based) on: W = the
    modality with the lower accuracy, S the other; on a tie W stays as it was (the first modality
    when none was decided yet); a record without both accuracies (no validation split) changes
    nothing, so ARM stays off until one has them. It is re-checked at every evaluated round, so W
    may change between rounds. ``broadcast`` sends {"weak": index} once decided (nothing before);
    ``server_metrics`` logs ``weak`` (the index the round's clients trained with; None during
    warm-up), ``weak_switches``, ``align``, ``kl``. Aggregation: modality-wise FedAvg.

    Client. Warm-up (nothing broadcast): the shared objective exactly (FedAvg). After, on the
    multimodal samples of a batch (n_B = samples of the batch with any modality):

        L = shared + [Σ_i CE(G_W(P u_W,i), y_i)
                      + μ·Σ_i (‖P u_W,i − sg(Q u_S,i)‖² + τ²·KL(sg(p_S,i^τ) ‖ p_W,i^τ))] / n_B
            + ν·‖PPᵀ − I‖²_F

    u_m = S_m h_m (``outputs.features``); P = W's ``arm_projection`` (k×d), Q = S's; G_W = W's
    ``arm_classifier`` (k → C); ‖·‖² the squared Euclidean distance in R^k (summed over the k
    coordinates, averaged over samples as every term); p_S^τ = softmax(C_S(S_S h_S) / τ) from S's
    self classifier (detached), p_W^τ = softmax(G_W(P u_W) / τ); KL(p‖q) = Σ_c p_c log(p_c / q_c)
    (see :func:`alignment_sum`, :func:`distillation_sum`, :func:`orthonormality_penalty`). The
    penalty is added once per batch, on batches with multimodal samples only (so a client with
    none never touches P's group). Q u_S is computed without a graph: no gradient reaches S (its
    encoder, S_S, Q or classifiers) through the regulariser; Q is therefore trained only in rounds
    where its modality is W. Samples with one modality: the shared objective only.

    Deviations and interpretations, stated: (1) the shared objective is kept, so the spec's
    CE(z_S) is the shared objective's λ1·CE(C_S(S_S h_S)) (weight λ1, not 1) and the shared
    objective also keeps λ1·CE(self_W): the self paths the report evaluates stay trained;
    ``aux_weight = 1`` gives the spec's objective plus CE(self_W). (2) W's projected classifier
    G_W(P u_W) is a training path only: evaluation reports the usual paths (fused, <m>_only,
    <m>_self). (3) The projections are initialised with orthonormal rows (QR of their seeded
    Kaiming draw), so Q starts as an isometric k-dim projection and the penalty starts at 0; the
    base network's weights are exactly :func:`build_model`'s for the same seed. (4) Besides W the
    server state holds ``switches``, ``align`` and ``kl`` for the metrics only (the spec: "no server
    state beyond W/S"); nothing in training reads them. (5) With ``eval_every`` > 1, W is first
    decided at the first evaluated round >= ``warmup_rounds``, so the warm-up lasts until then.
    Cost ≈ 1.05× FedAvg (two k×d products and a k×C head per step)."""

    name = "arm"
    two_modalities = True
    Hparams = ARMHparams
    Context = ARMContext
    network_class = ARMNet

    @classmethod
    def network(cls, specs: Sequence[ModalitySpec], num_classes: int, config: ModelConfig, hparams: Any,
                seed: int = 0) -> ARMNet:
        """:func:`build_model`'s network (same weights for the same seed) plus the ARM modules,
        their projections with orthonormal rows; seeded, on the CPU."""
        k = hparams.proj_dim
        if k > config.embed_dim:
            raise CmiError(f"arm.proj_dim (k = {k}) must be <= model.embed_dim (d = {config.embed_dim}): "
                           "the k rows of P can only be orthonormal in d dimensions; lower arm.proj_dim.")
        with torch.random.fork_rng(devices=[]):
            net = ARMNet(specs, num_classes, config, k)
        generator = torch.Generator().manual_seed(int(seed))
        # the base modules first, in build_model's order and from the same draws
        initialize(nn.ModuleList([net.branches] + ([net.fusion] if net.fusion is not None else [])), generator)
        with torch.no_grad():
            for projection in net.arm_projection.values():
                nn.init.kaiming_uniform_(projection.weight, a=math.sqrt(5), generator=generator)
                q, r = torch.linalg.qr(projection.weight.T.double())          # (d, k), (k, k)
                sign = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
                projection.weight.copy_((q * sign).T.float())
        initialize(net.arm_classifier, generator)
        return net

    # ----------------------------------------------------------------------------- server
    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {"weak": torch.tensor(-1, dtype=torch.int64), "switches": torch.tensor(0, dtype=torch.int64),
                "align": nan.clone(), "kl": nan.clone()}

    def observe_evaluation(self, server_state: ServerState, record: dict[str, Any]) -> ServerState:
        if int(record.get("round", 0)) < self.hparams.warmup_rounds:
            return server_state
        accuracy = (record.get("val") or {}).get("accuracy") or {}
        values = [accuracy.get(f"{m}_self") for m in self.modalities]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            return server_state
        current = int(server_state["weak"])
        a, b = (float(v) for v in values)
        weak = 0 if a < b else 1 if b < a else (current if current >= 0 else 0)
        state = dict(server_state)
        state["weak"] = torch.tensor(weak, dtype=torch.int64)
        if current >= 0 and weak != current:
            state["switches"] = server_state["switches"] + 1
        return state

    def broadcast(self, server_state: ServerState) -> ServerState:
        if int(server_state["weak"]) < 0:
            return {}
        return {"weak": server_state["weak"]}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        state = dict(server_state)
        for key in ("align", "kl"):
            reports = [(float(u.metrics[f"arm_{key}"]), int(u.metrics["arm_pairs"])) for u in updates
                       if u.metrics.get(f"arm_{key}") is not None and u.metrics.get("arm_pairs")]
            total = sum(n for _, n in reports)
            mean = sum(v * n for v, n in reports) / total if total else float("nan")
            state[key] = torch.tensor(mean, dtype=torch.float64)
        return self.aggregate(global_state, updates), state

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        weak = int(server_state["weak"])
        finite = lambda t: float(t) if math.isfinite(float(t)) else None   # noqa: E731
        return {"weak": float(weak) if weak >= 0 else None, "weak_switches": float(server_state["switches"]),
                "align": finite(server_state["align"]), "kl": finite(server_state["kl"])}

    # ----------------------------------------------------------------------------- client
    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client: ClientData, round_idx: int, **plan) -> ARMContext:
        ctx = super().prepare_round(model, global_state, pool, rows, client, round_idx, **plan)
        weak = ctx.broadcast.get("weak")
        if weak is not None and int(weak) >= 0:
            ctx.weak = self.modalities[int(weak)]
            ctx.strong = self.modalities[1 - int(weak)]
        return ctx

    def arm_loss(self, model: ARMNet, outputs: ModelOutputs, batch: Batch, ctx: ARMContext) -> Tensor | None:
        """The regulariser ARM adds to the shared objective on this batch (class docstring), or
        None when it adds nothing (warm-up, or no multimodal sample in the batch)."""
        complete = outputs.valid["fused"]
        if ctx.weak is None or not bool(complete.any()):
            return None
        w, s, tau = ctx.weak, ctx.strong, self.hparams.tau
        labels = batch.labels[complete]
        projection = model.arm_projection[w]
        projected = projection(outputs.features[w][complete])                        # P u_W
        with torch.no_grad():
            target = model.arm_projection[s](outputs.features[s][complete])          # sg(Q u_S)
        logits = model.arm_classifier[w](projected)                                  # G_W(P u_W)
        ce = F.cross_entropy(logits, labels, reduction="sum")
        align = alignment_sum(projected, target)
        kl = distillation_sum(logits, outputs.self_logits[s][complete], tau)
        n = outputs.routed_valid.sum()
        term = (ce + self.hparams.mu * (align + tau ** 2 * kl)) / n
        if self.hparams.nu:
            term = term + self.hparams.nu * orthonormality_penalty(projection.weight)
        ctx.align = align.detach() if ctx.align is None else ctx.align + align.detach()
        ctx.kl = kl.detach() if ctx.kl is None else ctx.kl + kl.detach()
        ctx.pairs += int(labels.shape[0])
        return term

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: ARMContext) -> Tensor:
        loss = super().local_loss(model, outputs, batch, ctx)
        extra = self.arm_loss(model, outputs, batch, ctx)
        return loss if extra is None else loss + extra

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: ARMContext) -> None:
        if ctx.weak is None:
            return
        ctx.metrics["arm_pairs"] = ctx.pairs
        ctx.metrics["arm_align"] = float(ctx.align) / ctx.pairs if ctx.pairs else None
        ctx.metrics["arm_kl"] = float(ctx.kl) / ctx.pairs if ctx.pairs else None
