"""The FedCMI network: per-modality encoder, self/infiltration projectors and shared classifier,
plus a fusion head; and the one-modality network used by the unimodal baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from pipelines.artifacts import eval_paths
from pipelines.errors import CmiError
from pipelines.models.encoders import ENCODERS, PixelNormalize, build_encoder
from pipelines.models.heads import FUSIONS, PROJECTORS, build_fusion, build_projector
from pipelines.shards import ModalitySpec


@dataclass(frozen=True)
class ModelConfig:
    """Model options: encoder backbone, embedding size d, projector and fusion kinds."""

    encoder: str = "small"       # "small" (CPU-friendly CNN/MLP) | "resnet18" (paper-faithful, from scratch)
    embed_dim: int = 128         # d (paper: 512 with resnet18)
    projector: str = "linear"    # "linear" | "mlp" (3-layer, ReLU)
    fusion: str = "concat"       # "concat" | "sum" | "film" | "gated"

    def __post_init__(self) -> None:
        for key, value, valid in (("encoder", self.encoder, ENCODERS), ("projector", self.projector, PROJECTORS),
                                  ("fusion", self.fusion, FUSIONS)):
            if value not in valid:
                raise CmiError(f"model.{key} = {value!r} is not valid; choose one of {', '.join(valid)}.")
        if self.embed_dim < 1:
            raise CmiError(f"model.embed_dim must be a positive integer, got {self.embed_dim}.")


@dataclass
class ModelOutputs:
    """Logits of one forward pass, each (B, n_classes). Rows where a tensor is undefined hold zeros:
    read ``valid`` (per path) / ``routed_valid`` before using them."""

    routed: Tensor                      # fused where all modalities present, else the <m>_only path
    routed_valid: Tensor                # (B,) bool: the row has at least one of the model's modalities
    self_logits: dict[str, Tensor]      # m -> C_m(S_m h_m)
    infiltration_logits: dict[str, Tensor]  # m -> C_m(I_m h_m) (empty for one-modality models)
    paths: dict[str, Tensor]            # eval_paths names: fused, <m>_only, <m>_self
    valid: dict[str, Tensor]            # path -> (B,) bool: rows on which the path is defined
    features: dict[str, Tensor] = field(default_factory=dict)  # m -> S_m h_m (B, d), zeros where m is absent


class ModalityBranch(nn.Module):
    """E_m, S_m, I_m (None in one-modality models) and the classifier C_m shared by S_m and I_m."""

    def __init__(self, spec: ModalitySpec, num_classes: int, cfg: ModelConfig, infiltration: bool):
        super().__init__()
        self.encoder = build_encoder(spec, cfg.encoder, cfg.embed_dim)
        self.self_projector = build_projector(cfg.projector, cfg.embed_dim)
        self.infiltration_projector = build_projector(cfg.projector, cfg.embed_dim) if infiltration else None
        self.classifier = nn.Linear(cfg.embed_dim, num_classes)


def _expand(rows: Tensor, mask: Tensor) -> Tensor:
    """Place per-row values computed on ``mask``'s rows into a (B, ...) tensor, zeros elsewhere."""
    if rows.shape[0] == mask.shape[0]:
        return rows
    return rows.new_zeros((mask.shape[0], *rows.shape[1:])).index_put((mask,), rows)


class MultimodalNet(nn.Module):
    """One or two modalities (manifest order). With two, the FedCMI model of the spec; with one,
    E, S and C only (the unimodal baselines), whose single path is ``<m>_self``.

    Parameter groups (state_dict keys, parameters and buffers): ``"<m>.encoder"`` (E_m, S_m, I_m),
    ``"<m>.classifier"`` (C_m), ``"fusion"`` (F). Encoders run only on the rows that have their
    modality, so a modality missing from a whole batch takes no part in the computation graph.

    ``missing_slot`` says what fills the absent modality's fusion slot on a one-modality row:
    ``"infiltration"`` (FedCMI's I_m h_m, the default) or ``"zeros"`` (the balancing literature's
    zeroed slot, e.g. CMSFed's weak-only clients); a method sets it on the model it trains and
    evaluates.
    """

    missing_slot: str = "infiltration"

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: ModelConfig):
        super().__init__()
        names = [s.name for s in specs]
        if len(specs) not in (1, 2) or len(set(names)) != len(names):
            raise CmiError(f"a model takes one or two distinct modalities, got {names}; "
                           "choose a dataset with two modalities or the unimodal method's `modality`.")
        for name in names:
            if not name or "." in name:
                raise CmiError(f"modality name {name!r} cannot name model parameters (empty or contains '.'); "
                               "rename it in the dataset and re-run `cmi prepare ... --force`.")
        if num_classes < 2:
            raise CmiError(f"a classifier needs at least 2 classes, the dataset has {num_classes}.")
        self.modalities: tuple[str, ...] = tuple(names)
        self.num_classes = num_classes
        pair = len(specs) == 2
        self.branches = nn.ModuleDict({s.name: ModalityBranch(s, num_classes, cfg, infiltration=pair) for s in specs})
        self.fusion = build_fusion(cfg.fusion, cfg.embed_dim, num_classes) if pair else None

    def parameter_groups(self) -> dict[str, list[str]]:
        """Group name -> state_dict keys (parameters and buffers); every key is in exactly one group."""
        groups: dict[str, list[str]] = {}
        for key in self.state_dict():
            top, rest = key.split(".", 1)
            if top == "fusion":
                group = "fusion"
            else:
                modality, part = rest.split(".", 1)
                group = f"{modality}.classifier" if part.startswith("classifier.") else f"{modality}.encoder"
            groups.setdefault(group, []).append(key)
        return groups

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> ModelOutputs:
        masks = {m: present[m].bool() for m in self.modalities}
        batch = masks[self.modalities[0]].shape[0]
        no_logits = masks[self.modalities[0]].new_zeros((batch, self.num_classes), dtype=torch.float32)
        features: dict[str, tuple[Tensor, Tensor | None]] = {}   # m -> (S_m h_m, I_m h_m) on m's rows
        projected: dict[str, Tensor] = {}   # m -> S_m h_m, (B, d)
        self_logits: dict[str, Tensor] = {}
        infiltration_logits: dict[str, Tensor] = {}
        for m, branch in self.branches.items():
            count = int(masks[m].sum())
            if count == 0:
                self_logits[m] = no_logits
                projected[m] = no_logits.new_zeros((batch, branch.classifier.in_features))
                if branch.infiltration_projector is not None:
                    infiltration_logits[m] = no_logits
                continue
            x = inputs[m] if count == batch else inputs[m].index_select(0, masks[m].nonzero().squeeze(1))
            h = branch.encoder(x)
            s = branch.self_projector(h)
            self_logits[m] = _expand(branch.classifier(s), masks[m])
            projected[m] = _expand(s, masks[m])
            i = None
            if branch.infiltration_projector is not None:
                i = branch.infiltration_projector(h)
                infiltration_logits[m] = _expand(branch.classifier(i), masks[m])
            features[m] = (s, i)

        if self.fusion is None:
            (m,) = self.modalities
            path = f"{m}_self"
            return ModelOutputs(routed=self_logits[m], routed_valid=masks[m], self_logits=self_logits,
                                infiltration_logits={}, paths={path: self_logits[m]}, valid={path: masks[m]},
                                features=projected)

        a, b = self.modalities
        both = masks[a] & masks[b]
        fused = no_logits
        if bool(both.any()):
            fused = _expand(self.fusion(features[a][0][both[masks[a]]], features[b][0][both[masks[b]]]), both)
        only_paths = {}
        for m in (a, b):
            if m not in features:
                only_paths[m] = no_logits
                continue
            s, i = features[m]
            # the infiltration feature fills the missing modality's slot: F(S_a, I_a) / F(I_b, S_b)
            fill = torch.zeros_like(s) if self.missing_slot == "zeros" else i
            only_paths[m] = _expand(self.fusion(s, fill) if m == a else self.fusion(fill, s), masks[m])
        routed = fused
        for m, other in ((a, b), (b, a)):
            only = masks[m] & ~masks[other]
            if bool(only.any()):
                routed = torch.where(only.unsqueeze(1), only_paths[m], routed)
        names = eval_paths(list(self.modalities))
        tensors = [fused, only_paths[a], only_paths[b], self_logits[a], self_logits[b]]
        valid = [both, masks[a], masks[b], masks[a], masks[b]]
        return ModelOutputs(routed=routed, routed_valid=masks[a] | masks[b], self_logits=self_logits,
                            infiltration_logits=infiltration_logits,
                            paths=dict(zip(names, tensors)), valid=dict(zip(names, valid)), features=projected)


@torch.no_grad()
def initialize(net: nn.Module, generator: torch.Generator) -> None:
    """(Re)initialise every parameter and buffer from ``generator`` (never the global RNG): convs
    Kaiming-normal (fan_out, ReLU; as torchvision's ResNet), linears PyTorch's default
    Kaiming-uniform, BatchNorm weight 1 / bias 0 with fresh running statistics."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(module.in_features)
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
        elif isinstance(module, PixelNormalize):
            module.reset_constants()
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise TypeError(f"initialize() does not know how to initialise {type(module).__name__}")


def build_model(specs: Sequence[ModalitySpec], num_classes: int, cfg: ModelConfig = ModelConfig(),
                seed: int = 0) -> MultimodalNet:
    """A freshly initialised model for these modality specs (manifest order), on the CPU.

    Initialised from a ``torch.Generator`` seeded with ``seed``: the same seed gives the same
    weights, and the global RNG is left as it was (the modules' own default initialisation runs
    under :func:`torch.random.fork_rng`). Built on the CPU rather than the meta device: moving
    meta tensors to the CPU first imports a good part of torch's compiler stack (0.4-0.7 s), which
    a fresh process, e.g. a Flower ClientApp's for every message, would pay each time."""
    with torch.random.fork_rng(devices=[]):
        net = MultimodalNet(specs, num_classes, cfg)
    initialize(net, torch.Generator().manual_seed(int(seed)))
    return net
