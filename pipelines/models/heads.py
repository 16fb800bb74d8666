"""Projectors (S_m, I_m: d -> d) and fusion heads (F: two d-vectors -> class logits).

The fusion heads follow the modality-imbalance literature's fusion modules (OGM-GE and the FedCMI
authors' code): ``concat`` = Linear(cat(x_a, x_b)); ``sum`` = Linear_a(x_a) + Linear_b(x_b);
``film`` = x_a produces (gamma, beta) that modulate x_b, then a linear; ``gated`` =
sigmoid(Linear_a(x_a)) gates Linear_b(x_b), then a linear. x_a is the first modality's slot.

``concat`` and ``sum`` are additive in the two slots, so they also give each modality's share of
the fused logits (``slices``), which OGM-GE's per-modality scores are computed from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipelines.errors import CmiError

PROJECTORS = ("linear", "mlp")
FUSIONS = ("concat", "sum", "film", "gated")


def build_projector(kind: str, dim: int) -> nn.Module:
    """d -> d projector: one linear layer, or a 3-layer MLP with ReLU between the layers."""
    if kind == "linear":
        return nn.Linear(dim, dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
    raise CmiError(f"unknown projector {kind!r}; choose one of {', '.join(PROJECTORS)} (model.projector).")


class ConcatFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.out = nn.Linear(2 * dim, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return self.out(torch.cat((x_a, x_b), dim=1))

    def slices(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
        """Each slot's share of the logits, W_a x_a + b/2 and W_b x_b + b/2 (they sum to forward's)."""
        w_a, w_b = self.out.weight.split(x_a.shape[1], dim=1)
        half = self.out.bias / 2
        return x_a @ w_a.T + half, x_b @ w_b.T + half


class SumFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.out_a = nn.Linear(dim, num_classes)
        self.out_b = nn.Linear(dim, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return self.out_a(x_a) + self.out_b(x_b)

    def slices(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
        """Each slot's share of the logits (they sum to forward's)."""
        return self.out_a(x_a), self.out_b(x_b)


class FiLMFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.film = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        gamma, beta = self.film(x_a).chunk(2, dim=1)
        return self.out(gamma * x_b + beta)


class GatedFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.in_a = nn.Linear(dim, dim)
        self.in_b = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return self.out(torch.sigmoid(self.in_a(x_a)) * self.in_b(x_b))


_FUSION_HEADS = {"concat": ConcatFusion, "sum": SumFusion, "film": FiLMFusion, "gated": GatedFusion}


def build_fusion(kind: str, dim: int, num_classes: int) -> nn.Module:
    if kind not in _FUSION_HEADS:
        raise CmiError(f"unknown fusion {kind!r}; choose one of {', '.join(FUSIONS)} (model.fusion).")
    return _FUSION_HEADS[kind](dim, num_classes)
