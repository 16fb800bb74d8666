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

    routed: Tensor                      # fused where all modalities present, else the routed partial path
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
    """One modality, or M >= 2 modalities (manifest order). With M >= 2, the FedCMI model of the
    spec, generalised slot by slot; with one, E, S and C only (the unimodal baselines), whose single
    path is ``<m>_self``.

    With M >= 2 modalities, per modality m: E_m, S_m, I_m and C_m (a ``ModalityBranch``); one
    fusion head F with M slots, slot k the k-th modality's (``heads.py``: ``concat`` and ``sum``
    take any M; ``film`` and ``gated`` two only, a CmiError otherwise). Paths, on a row whose
    present modalities are S (non-empty):

    - fused, S = every modality: F(S_1 h_1, ..., S_M h_M).
    - routed partial path, S a proper non-empty subset: slot m holds S_m h_m for m ∈ S; every
      missing slot holds the fill f = (1/|S|)·Σ_{m ∈ S} I_m h_m, the mean of the present
      modalities' infiltration features (summed in manifest order), or zeros with
      ``missing_slot = "zeros"``.
    - ``<m>_only`` (defined on every row with m, read as "only m present"): slot m holds S_m h_m and
      every other slot I_m h_m (zeros with ``missing_slot = "zeros"``): the routed partial path of
      S = {m}. With M = 2 exactly the spec's F(S_A h_A, I_A h_A) / F(I_B h_B, S_B h_B).
    - ``<m>_self`` = C_m(S_m h_m); infiltration logits C_m(I_m h_m), on the rows with m.
    - ``routed``: fused on rows with every modality, ``<m>_only`` on rows with only m, the routed
      partial path on rows with 2..M−1 modalities (none when M = 2); zeros where no modality.

    ``valid``: ``fused`` = every modality present; ``<m>_only`` and ``<m>_self`` = m present;
    ``routed_valid`` = any modality present. Everything is vectorised over the batch (loops run
    over modalities, never over samples); with M = 2 the arithmetic is exactly the two-modality
    model's (same modules, calls and shapes).

    Parameter groups (state_dict keys, parameters and buffers): ``"<m>.encoder"`` (E_m, S_m, I_m),
    ``"<m>.classifier"`` (C_m), ``"fusion"`` (F). Encoders run only on the rows that have their
    modality, so a modality missing from a whole batch takes no part in the computation graph.

    ``missing_slot`` says what fills an absent modality's fusion slot on a row without every
    modality: ``"infiltration"`` (FedCMI's I_m h_m, mean over the present modalities; the default)
    or ``"zeros"`` (the balancing literature's zeroed slot, e.g. CMSFed's weak-only clients); a
    method sets it on the model it trains and evaluates.
    """

    missing_slot: str = "infiltration"

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: ModelConfig):
        super().__init__()
        names = [s.name for s in specs]
        if len(specs) < 1 or len(set(names)) != len(names):
            raise CmiError(f"a model takes one or more distinct modalities, got {names}; "
                           "choose a dataset with distinct modality names or the unimodal method's `modality`.")
        for name in names:
            if not name or "." in name:
                raise CmiError(f"modality name {name!r} cannot name model parameters (empty or contains '.'); "
                               "rename it in the dataset and re-run `cmi prepare ... --force`.")
        if num_classes < 2:
            raise CmiError(f"a classifier needs at least 2 classes, the dataset has {num_classes}.")
        self.modalities: tuple[str, ...] = tuple(names)
        self.num_classes = num_classes
        multi = len(specs) >= 2
        self.branches = nn.ModuleDict({s.name: ModalityBranch(s, num_classes, cfg, infiltration=multi) for s in specs})
        self.fusion = build_fusion(cfg.fusion, cfg.embed_dim, num_classes, slots=len(specs)) if multi else None

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

        mods = self.modalities
        complete = masks[mods[0]]
        for m in mods[1:]:
            complete = complete & masks[m]
        fused = no_logits
        if bool(complete.any()):
            fused = _expand(self.fusion(*(features[m][0][complete[masks[m]]] for m in mods)), complete)
        only_paths = {}
        for k, m in enumerate(mods):
            if m not in features:
                only_paths[m] = no_logits
                continue
            s, i = features[m]
            # m's infiltration feature fills every other slot: F(S_a, I_a) / F(I_b, S_b) for M = 2
            fill = torch.zeros_like(s) if self.missing_slot == "zeros" else i
            slots = [fill] * len(mods)
            slots[k] = s
            only_paths[m] = _expand(self.fusion(*slots), masks[m])
        count = torch.stack([masks[m] for m in mods]).sum(dim=0)     # present modalities per row
        routed = fused
        for m in mods:
            only = masks[m] & (count == 1)
            if bool(only.any()):
                routed = torch.where(only.unsqueeze(1), only_paths[m], routed)
        partial = (count > 1) & ~complete                                # 2..M-1 modalities (M > 2 only)
        if bool(partial.any()):
            routed = torch.where(partial.unsqueeze(1), _expand(self._partial(features, masks, partial, count), partial),
                                 routed)
        names = eval_paths(list(mods))
        tensors = [fused] + [only_paths[m] for m in mods] + [self_logits[m] for m in mods]
        valid = [complete] + [masks[m] for m in mods] + [masks[m] for m in mods]
        return ModelOutputs(routed=routed, routed_valid=count > 0, self_logits=self_logits,
                            infiltration_logits=infiltration_logits,
                            paths=dict(zip(names, tensors)), valid=dict(zip(names, valid)), features=projected)

    def _partial(self, features: dict[str, tuple[Tensor, Tensor | None]], masks: dict[str, Tensor],
                 partial: Tensor, count: Tensor) -> Tensor:
        """F on the ``partial`` rows (2..M−1 modalities): S_m h_m in a present modality's slot, the
        mean of the present modalities' I_m h_m (or zeros) in every missing one; (n_partial, C)."""
        present = {m: masks[m][partial] for m in self.modalities}
        own = {}        # m -> S_m h_m on the partial rows, zeros where m is absent
        infiltration = []
        for m in self.modalities:
            if m not in features:
                continue
            s, i = features[m]
            on_m = partial[masks[m]]                 # which of m's rows are partial
            own[m] = _expand(s[on_m], present[m])
            infiltration.append(_expand(i[on_m], present[m]))
        n = int(partial.sum())
        if self.missing_slot == "zeros":
            fill = infiltration[0].new_zeros((n, infiltration[0].shape[1]))
        else:
            total = infiltration[0]
            for part in infiltration[1:]:
                total = total + part
            fill = total / count[partial].unsqueeze(1).to(total.dtype)
        slots = [torch.where(present[m].unsqueeze(1), own[m], fill) if m in own else fill for m in self.modalities]
        return self.fusion(*slots)


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
            if module.bias is not None:
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
