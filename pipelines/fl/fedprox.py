"""FedProx (Li et al., MLSys 2020): FedAvg plus the proximal term (μ/2)·||w − w_global||²."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import ClientData, FedAvg, FedAvgHparams, RoundContext, State, TrainPool
from pipelines.models import MultimodalNet


@dataclass(frozen=True)
class FedProxHparams(FedAvgHparams):
    """mu: μ, weight of the proximal term (0.01: a value from FedProx's own grid {0.001, 0.01, 0.1,
    1} common as a default in FL benchmarks). Each SGD step pulls by lr·μ·(w − w_global), so μ
    scales with the learning rate (see FedCMIHparams); the README's sensitivity study compares
    0.01 and 0.05 at cmi's lr 0.02."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mu < 0:
            raise CmiError(f"mu (proximal weight) must be >= 0, got {self.mu}.")


@dataclass
class ProxContext(RoundContext):
    """``anchors``: (parameter of the local model, its received global value on the device) for
    every parameter: the proximal anchor, paired once per client instead of by name every step
    (None when μ = 0)."""

    anchors: list[tuple[Tensor, Tensor]] | None = None


class FedProx(FedAvg):
    """FedAvg whose local objective adds (μ/2)·||w − w_global||² over the trainable parameters,
    i.e. the parameters the local objective reaches: its gradient μ(w − w_global) is added to
    every parameter that has a gradient after the objective's backward pass, so groups a client
    cannot train (the other modality of a unimodal client) are neither pulled nor reported."""

    name = "fedprox"
    Hparams = FedProxHparams
    Context = ProxContext

    @property
    def mu(self) -> float:
        return self.hparams.mu

    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client: ClientData, round_idx: int, **plan) -> ProxContext:
        ctx = super().prepare_round(model, global_state, pool, rows, client, round_idx, **plan)
        if self.mu:
            ctx.anchors = [(p, global_state[name].to(self.device)) for name, p in model.named_parameters()]
        return ctx

    @torch.no_grad()
    def regularize_gradients(self, model: MultimodalNet, ctx: ProxContext) -> Tensor | float:
        if not self.mu:
            return 0.0
        reached = [(p, anchor) for p, anchor in ctx.anchors if p.grad is not None]
        if not reached:
            return 0.0
        params, anchors = (list(t) for t in zip(*reached))
        diffs = torch._foreach_sub(params, anchors)
        torch._foreach_add_([p.grad for p in params], diffs, alpha=self.mu)
        # (μ/2)·Σ‖w − w_g‖², left on the device: the loop reads it with the loss, one sync per step
        return 0.5 * self.mu * torch.stack(torch._foreach_norm(diffs)).double().square().sum()
