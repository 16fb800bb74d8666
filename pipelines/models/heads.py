"""Projectors (S_m, I_m: d -> d) and fusion heads (F: one d-vector per modality slot -> class logits).

The fusion heads follow the modality-imbalance literature's fusion modules (OGM-GE and the FedCMI
authors' code). A head has one slot per modality of the model (M >= 2, manifest order; slot k is
the k-th modality's) and is called ``F(x_1, ..., x_M)`` with one (n, d) tensor per slot:

- ``concat`` = Linear(cat(x_1, ..., x_M)): one Linear over the concatenation of the M d-vectors
  (in features M·d);
- ``sum`` = Σ_m Linear_m(x_m), one Linear per slot (modules ``out_a``, ``out_b``, ``out_c``, ...
  for slots 1, 2, 3, ...; the sum runs left to right in slot order);
- ``film`` = x_a produces (gamma, beta) that modulate x_b, then a linear;
- ``gated`` = sigmoid(Linear_a(x_a)) gates Linear_b(x_b), then a linear.

``film`` and ``gated`` are defined for two slots only (one modality conditions the other): asking
for them with M > 2 modalities is a CmiError that names ``concat`` / ``sum``. With two slots every
head is exactly the two-modality head it always was (same modules, same state_dict keys, same
arithmetic): ``F(x_a, x_b)``, x_a the first modality's slot.

``concat`` and ``sum`` are additive in their slots, so they also give each modality's share of
the fused logits (``slices``), which OGM-GE's per-modality scores are computed from.
"""

from __future__ import annotations

import string

import torch
from torch import Tensor, nn

from pipelines.errors import CmiError

PROJECTORS = ("linear", "mlp")
FUSIONS = ("concat", "sum", "film", "gated")
#: the fusion heads that take any number (>= 2) of modality slots
MULTI_SLOT_FUSIONS = ("concat", "sum")


def build_projector(kind: str, dim: int) -> nn.Module:
    """d -> d projector: one linear layer, or a 3-layer MLP with ReLU between the layers."""
    if kind == "linear":
        return nn.Linear(dim, dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
    raise CmiError(f"unknown projector {kind!r}; choose one of {', '.join(PROJECTORS)} (model.projector).")


def slot_name(k: int) -> str:
    """Slot k's (0-based) letter suffix: a, b, ..., z, aa, ab, ... (bijective base 26)."""
    name = ""
    k += 1
    while k:
        k, rest = divmod(k - 1, 26)
        name = string.ascii_lowercase[rest] + name
    return name


def _check_slots(xs: tuple[Tensor, ...], slots: int) -> None:
    if len(xs) != slots:
        raise ValueError(f"this fusion head has {slots} modality slots, called with {len(xs)} tensors")


def _two_slots_only(kind: str, slots: int) -> None:
    if slots != 2:
        raise CmiError(f"fusion {kind!r} is defined for two modalities (one conditions the other); the model has "
                       f"{slots}: use one of {', '.join(MULTI_SLOT_FUSIONS)} (--set model.fusion=concat).")


class ConcatFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int, slots: int = 2):
        super().__init__()
        self.slots = slots
        self.out = nn.Linear(slots * dim, num_classes)

    def forward(self, *xs: Tensor) -> Tensor:
        _check_slots(xs, self.slots)
        return self.out(torch.cat(xs, dim=1))

    def slices(self, *xs: Tensor) -> tuple[Tensor, ...]:
        """Each slot's share of the logits, W_m x_m + b/M (they sum to forward's)."""
        _check_slots(xs, self.slots)
        weights = self.out.weight.split(xs[0].shape[1], dim=1)
        share = self.out.bias / self.slots
        return tuple(x @ w.T + share for x, w in zip(xs, weights))


class SumFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int, slots: int = 2):
        super().__init__()
        self.slots = slots
        for k in range(slots):      # registered in slot order: out_a, out_b, ... (initialisation order)
            setattr(self, f"out_{slot_name(k)}", nn.Linear(dim, num_classes))

    def heads(self) -> list[nn.Linear]:
        return [getattr(self, f"out_{slot_name(k)}") for k in range(self.slots)]

    def forward(self, *xs: Tensor) -> Tensor:
        _check_slots(xs, self.slots)
        heads = self.heads()
        total = heads[0](xs[0])
        for head, x in zip(heads[1:], xs[1:]):
            total = total + head(x)
        return total

    def slices(self, *xs: Tensor) -> tuple[Tensor, ...]:
        """Each slot's share of the logits (they sum to forward's)."""
        _check_slots(xs, self.slots)
        return tuple(head(x) for head, x in zip(self.heads(), xs))


class FiLMFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int, slots: int = 2):
        super().__init__()
        _two_slots_only("film", slots)
        self.film = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        gamma, beta = self.film(x_a).chunk(2, dim=1)
        return self.out(gamma * x_b + beta)


class GatedFusion(nn.Module):
    def __init__(self, dim: int, num_classes: int, slots: int = 2):
        super().__init__()
        _two_slots_only("gated", slots)
        self.in_a = nn.Linear(dim, dim)
        self.in_b = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return self.out(torch.sigmoid(self.in_a(x_a)) * self.in_b(x_b))


_FUSION_HEADS = {"concat": ConcatFusion, "sum": SumFusion, "film": FiLMFusion, "gated": GatedFusion}


def build_fusion(kind: str, dim: int, num_classes: int, slots: int = 2) -> nn.Module:
    """The fusion head ``kind`` with ``slots`` modality slots (the model's number of modalities)."""
    if kind not in _FUSION_HEADS:
        raise CmiError(f"unknown fusion {kind!r}; choose one of {', '.join(FUSIONS)} (model.fusion).")
    if slots < 2:
        raise ValueError(f"a fusion head needs at least two modality slots, got {slots}")
    return _FUSION_HEADS[kind](dim, num_classes, slots)
