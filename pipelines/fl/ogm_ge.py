"""OGM-GE, on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR
2022), in federated form: every client modulates its own encoder gradients; stateless.
Definition: ``shared/spec/methods.md``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import Batch, FedAvg, FedAvgHparams, RoundContext
from pipelines.fl.measures import ground_truth_probability
from pipelines.models import ModelOutputs, MultimodalNet


@dataclass(frozen=True)
class OGMGEHparams(FedAvgHparams):
    """alpha: α of the coefficient k = 1 − tanh(α·ρ) (0.8, the authors' CREMA-D value)."""

    alpha: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise CmiError(f"ogm_ge.alpha must be >= 0, got {self.alpha}.")


def modulation_coefficients(logits_a: Tensor, logits_b: Tensor, labels: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(k_A, k_B), 0-d tensors: s_m = Σ_i softmax(z_m)_i[y_i]; the dominant modality (ρ = s_dom /
    s_weak > 1) gets k = 1 − tanh(α·ρ), the other (and both on a tie) k = 1. Computed on the
    device without a host sync."""
    s_a = ground_truth_probability(logits_a, labels).sum()
    s_b = ground_truth_probability(logits_b, labels).sum()
    one = torch.ones((), device=s_a.device, dtype=s_a.dtype)
    k_a = torch.where(s_a > s_b, 1 - torch.tanh(alpha * s_a / s_b.clamp_min(1e-12)), one)
    k_b = torch.where(s_b > s_a, 1 - torch.tanh(alpha * s_b / s_a.clamp_min(1e-12)), one)
    return k_a, k_b


class OGMGE(FedAvg):
    """The shared objective; after each backward pass of a batch with multimodal samples, every
    encoder-group gradient g of modality m (E_m, S_m, I_m) becomes k_m·g + N(0, std(g)²), with k
    from :func:`modulation_coefficients` on the fusion head's per-modality slices of the logits
    (``slices``: concat or sum fusion) over the batch's multimodal samples, and the noise drawn
    from the step's seeded generator (std of the unmodulated gradient; none for one-element
    tensors). Classifier and fusion gradients are untouched; a batch without multimodal samples is
    not modulated."""

    name = "ogm_ge"
    two_modalities = True
    Hparams = OGMGEHparams

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.model.fusion, "slices"):
            raise CmiError("method ogm_ge needs a fusion head whose logits split by modality: set model.fusion to "
                           "concat or sum (--set model.fusion=concat).")
        self.encoder_params = {m: [p for name, p in self.model.named_parameters()
                                   if self.param_groups[name] == f"{m}.encoder"] for m in self.modalities}

    @torch.no_grad()
    def after_backward(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: RoundContext,
                       step: int, generator: torch.Generator) -> None:
        complete = outputs.valid["fused"]
        if not bool(complete.any()):
            return
        a, b = self.modalities
        z_a, z_b = model.fusion.slices(outputs.features[a][complete], outputs.features[b][complete])
        coefficients = modulation_coefficients(z_a, z_b, batch.labels[complete], self.hparams.alpha)
        for m, k in zip((a, b), coefficients):
            for p in self.encoder_params[m]:
                if p.grad is None:
                    continue
                std = p.grad.std() if p.grad.numel() > 1 else None
                p.grad.mul_(k)
                if std is not None:
                    p.grad.add_(torch.randn(p.grad.shape, generator=generator, device=p.grad.device,
                                            dtype=p.grad.dtype) * std)
