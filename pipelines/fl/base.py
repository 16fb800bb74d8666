"""The federated base: training data pool, client/update records, FedAvg with its hooks, and the
group-wise (modality-wise) aggregation every federated method shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.models import ModelOutputs, MultimodalNet
from pipelines.shards import ModalitySpec

State = dict[str, Tensor]


@dataclass
class Batch:
    """One mini-batch on the training device. ``indices`` are the rows of the TrainPool."""

    inputs: dict[str, Tensor]
    present: dict[str, Tensor]
    labels: Tensor
    indices: Tensor


@dataclass
class TrainPool:
    """All training tensors, once, in memory (clients hold only row indices into it).

    ``inputs[m]`` is (N, *shape) as stored (uint8 or float32); ``present[m]`` (N,) bool says whether
    row n really has modality m after the partition's availability; ``labels`` (N,) int64."""

    inputs: dict[str, Tensor]
    present: dict[str, Tensor]
    labels: Tensor

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        for m, x in self.inputs.items():
            if x.shape[0] != n or self.present[m].shape != (n,):
                raise ValueError(f"TrainPool: modality {m} has {x.shape[0]} rows / presence {tuple(self.present[m].shape)}, "
                                 f"labels have {n}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def rows_with_any(self, indices: np.ndarray, modalities: tuple[str, ...]) -> np.ndarray:
        """The subset of ``indices`` whose rows have at least one of ``modalities``."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        keep = torch.zeros(idx.shape[0], dtype=torch.bool)
        for m in modalities:
            keep |= self.present[m][idx]
        return idx[keep].numpy()

    def batches(self, indices: np.ndarray, batch_size: int, generator: torch.Generator | None,
                shuffle: bool = True, device: torch.device | None = None) -> Iterator[Batch]:
        """Mini-batches over ``indices`` (every index exactly once; the last batch may be smaller),
        in an order drawn from ``generator`` when ``shuffle``; tensors moved to ``device`` batch by
        batch (``None``: left where the pool is)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if shuffle:
            idx = idx[torch.randperm(idx.shape[0], generator=generator)]
        for start in range(0, idx.shape[0], batch_size):
            rows = idx[start:start + batch_size]
            # index_select: an order of magnitude faster than x[rows] on large uint8 payloads
            yield Batch(
                inputs={m: x.index_select(0, rows).to(device) for m, x in self.inputs.items()},
                present={m: p.index_select(0, rows).to(device) for m, p in self.present.items()},
                labels=self.labels.index_select(0, rows).to(device),
                indices=rows.to(device),
            )


@dataclass
class ClientData:
    cid: int
    indices: np.ndarray            # rows of the TrainPool
    modalities: tuple[str, ...]    # modalities this client holds at all


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation: SGD with momentum and weight decay, ``local_epochs`` passes per round."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    local_epochs: int = 1
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.local_epochs < 1 or self.batch_size < 1:
            raise CmiError(f"invalid training settings {self}: need lr > 0, momentum >= 0, weight_decay >= 0, "
                           "local_epochs >= 1, batch_size >= 1 (train.* options).")


@dataclass
class ClientUpdate:
    """What a client sends back after local training.

    ``state`` is the full local state_dict (it may be the very ``global_state`` object when the
    client had nothing to train: ``num_samples == 0``, no trained groups). ``client_state`` is the
    state the engine keeps for this client and passes back as ``client_state`` the next time it
    participates (``None`` for stateless methods; method ``local`` keeps its model there).
    ``metrics["loss"]`` is the sample-weighted mean local loss (0.0 when nothing was trained). It is
    non-finite when training diverged: training stopped at that batch without a step, ``state``
    holds the parameters before it (BatchNorm statistics may already include the bad batch), and
    the engine must stop instead of aggregating."""

    cid: int
    num_samples: int
    state: State
    trained_groups: set[str]
    metrics: dict[str, Any]
    client_state: State | None = None


@dataclass
class RoundContext:
    """What a method prepares for one client's local training, before its first step.

    ``reference``: the received global parameters on the device, keyed like ``named_parameters``
    (FedProx's anchor). ``temperatures``: FedCMI's class-wise temperatures (n_classes,).
    ``teacher_rows`` / ``teacher_logits``: FedCMI's frozen-global self logits for the client's
    multimodal rows (sorted pool rows; m -> (n, n_classes)). ``metrics`` are merged into the
    update's metrics."""

    client: ClientData
    round_idx: int
    reference: dict[str, Tensor] | None = None
    temperatures: Tensor | None = None
    teacher_rows: Tensor | None = None
    teacher_logits: dict[str, Tensor] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FedAvgHparams:
    """aux_weight: λ1, weight of the self-classifier losses Σ_m CE(C_m(S_m h_m)) on multimodal
    samples (2.0, the FedCMI authors' default; the same objective for every multimodal method)."""

    aux_weight: float = 2.0

    def __post_init__(self) -> None:
        if self.aux_weight < 0:
            raise CmiError(f"aux_weight (λ1) must be >= 0, got {self.aux_weight}.")


def average_groups(global_state: State, updates: list[ClientUpdate], groups: dict[str, list[str]]) -> State:
    """Group-wise weighted average: each group's keys are averaged (weights = num_samples) over the
    updates whose ``trained_groups`` contain the group; a group nobody trained keeps
    ``global_state``'s values. Buffers follow their group; integer buffers (BatchNorm's
    ``num_batches_tracked``) get the weighted mean rounded to the nearest integer. Sums run in
    float64. Inputs are not modified; untouched tensors are shared with ``global_state``."""
    new_state = dict(global_state)
    for group, keys in groups.items():
        contributors = [u for u in updates if group in u.trained_groups and u.num_samples > 0]
        if not contributors:
            continue
        total = float(sum(u.num_samples for u in contributors))
        for key in keys:
            acc = torch.zeros_like(global_state[key], dtype=torch.float64)
            for u in contributors:
                acc.add_(u.state[key].to(acc.device, torch.float64), alpha=u.num_samples / total)
            dtype = global_state[key].dtype
            new_state[key] = (acc.round() if not dtype.is_floating_point else acc).to(dtype)
    return new_state


class FedAvg:
    """Federated averaging with the shared multimodal objective, the base of every method.

    ``client_update`` and ``aggregate`` are pure: the result depends only on the arguments, so the
    local engine and a Flower ClientApp / ServerApp call them alike. The method keeps one model on
    its device to train in (built once, by ``model_factory``): each ``client_update`` loads the
    state it starts from into it and returns copies, never views of it. One call at a time per
    method instance (not re-entrant).

    Local training: SGD (TrainConfig) for ``local_epochs`` over the client's rows that have at least
    one of the model's modalities, in mini-batches from ``TrainPool.batches`` shuffled by a
    ``torch.Generator`` seeded with ``seed``. Per-sample loss (``local_loss``): a sample with every
    modality: CE(fused) + λ1·Σ_m CE(self_m); a sample with only m: CE(<m>_only); the batch loss is
    the mean over the batch's samples (a term defined on some samples only contributes its sum over
    them divided by the batch size).

    Hooks for subclasses: ``prepare_round`` (per-client context computed once before training,
    with the model still holding the received state), ``local_loss`` (the batch objective) and
    ``regularize_gradients`` (add a parameter-space regulariser's gradient to the parameters the
    objective reached, e.g. FedProx's proximal term). ``select_specs`` lets a method choose the
    modalities its model is built with.

    ``trained_groups`` are the parameter groups whose parameters received a gradient from the local
    objective in at least one step (the optimizer skips parameters without one), so an A-only
    client reports {"A.encoder", "fusion"}: it never reaches C_A nor anything of B.
    """

    name = "fedavg"
    Hparams = FedAvgHparams
    federated = True
    pooled = False

    def __init__(self, model_factory: Callable[[], MultimodalNet], train: TrainConfig, hparams: Any,
                 device: torch.device):
        self.model_factory = model_factory
        self.train = train
        self.hparams = hparams
        self.device = torch.device(device)
        self.model = model_factory().to(self.device)
        self.modalities = self.model.modalities
        self.groups = self.model.parameter_groups()
        self.param_groups = {key: group for group, keys in self.groups.items() for key in keys}

    @classmethod
    def select_specs(cls, specs: list[ModalitySpec], hparams: Any) -> list[ModalitySpec]:
        """The modality specs this method's model is built with (all of them by default)."""
        return list(specs)

    # ----------------------------------------------------------------------------- hooks
    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client: ClientData, round_idx: int) -> RoundContext:
        """Per-client context for this round, computed before the first step; ``model`` holds the
        state training starts from and ``rows`` are the rows it trains on."""
        return RoundContext(client=client, round_idx=round_idx)

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: RoundContext) -> Tensor:
        """The shared objective (class docstring): routed CE + λ1·Σ_m self CE on multimodal samples."""
        valid = outputs.routed_valid
        batch_size = int(valid.sum())
        loss = F.cross_entropy(outputs.routed[valid], batch.labels[valid], reduction="sum")
        if len(model.modalities) > 1 and self.hparams.aux_weight:
            complete = outputs.valid["fused"]
            if bool(complete.any()):
                labels = batch.labels[complete]
                aux = sum(F.cross_entropy(outputs.self_logits[m][complete], labels, reduction="sum")
                          for m in model.modalities)
                loss = loss + self.hparams.aux_weight * aux
        return loss / batch_size

    def regularize_gradients(self, model: MultimodalNet, ctx: RoundContext) -> float:
        """Add a regulariser's gradient to every parameter that has one; return its value (base: none)."""
        return 0.0

    # ----------------------------------------------------------------------------- protocol
    def client_update(self, global_state: State, pool: TrainPool, client: ClientData, round_idx: int, seed: int,
                      client_state: State | None = None) -> ClientUpdate:
        """Train on the client's data starting from ``client_state`` if given (methods that keep
        one), else ``global_state``; deterministic given ``seed``."""
        rows = pool.rows_with_any(client.indices, self.modalities)
        if rows.shape[0] == 0:
            return ClientUpdate(cid=client.cid, num_samples=0, state=global_state, trained_groups=set(),
                                metrics={"loss": 0.0}, client_state=client_state)
        model = self.model
        model.load_state_dict(client_state if client_state is not None else global_state)
        ctx = self.prepare_round(model, global_state, pool, rows, client, round_idx)
        model.train()
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        optimizer = torch.optim.SGD([p for _, p in params], lr=self.train.lr, momentum=self.train.momentum,
                                    weight_decay=self.train.weight_decay)
        generator = torch.Generator().manual_seed(int(seed))
        trained: set[str] = set()
        loss_sum, seen = 0.0, 0
        for _ in range(self.train.local_epochs):
            for batch in pool.batches(rows, self.train.batch_size, generator, device=self.device):
                optimizer.zero_grad(set_to_none=True)
                outputs = model(batch.inputs, batch.present)
                loss = self.local_loss(model, outputs, batch, ctx)
                value = float(loss.detach())
                if not math.isfinite(value):
                    return self._update(client, rows, model, trained, value, ctx)
                loss.backward()
                trained.update(self.param_groups[name] for name, p in params if p.grad is not None)
                value += self.regularize_gradients(model, ctx)
                optimizer.step()
                loss_sum += value * batch.labels.shape[0]
                seen += batch.labels.shape[0]
        return self._update(client, rows, model, trained, loss_sum / seen, ctx)

    def _update(self, client: ClientData, rows: np.ndarray, model: MultimodalNet, trained: set[str],
                loss: float, ctx: RoundContext) -> ClientUpdate:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}   # the model is reused
        return ClientUpdate(cid=client.cid, num_samples=int(rows.shape[0]), state=state, trained_groups=trained,
                            metrics={"loss": loss, **ctx.metrics})

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        """Group-wise weighted average over the updates that trained each group (``average_groups``)."""
        return average_groups(global_state, updates, self.groups)
