"""The federated base: training data pool, client/update records, FedAvg with its hooks, and the
group-wise (modality-wise) aggregation every federated method shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.sgd import sgd

from pipelines.errors import CmiError
from pipelines.models import ModelConfig, ModelOutputs, MultimodalNet, build_model
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


class MomentumSGD:
    """torch.optim.SGD's update (momentum, weight decay, no dampening or Nesterov), computed by
    torch's own functional ``torch.optim.sgd.sgd`` over a fixed parameter list; parameters
    without a gradient are skipped and keep their momentum, as in torch.optim.SGD. Not the
    Optimizer class: its first construction in a process imports torch._dynamo (about 2 s here),
    which every Flower ClientApp process (one per message) would pay."""

    def __init__(self, params: Sequence[Tensor], train: TrainConfig):
        self.params = list(params)
        self.train = train
        self.momentum: list[Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        reached = [k for k, p in enumerate(self.params) if p.grad is not None]
        buffers = [self.momentum[k] for k in reached]
        params = [self.params[k] for k in reached]
        sgd(params, [p.grad for p in params], buffers, weight_decay=self.train.weight_decay,
            momentum=self.train.momentum, lr=self.train.lr, dampening=0.0, nesterov=False, maximize=False)
        for k, buffer in zip(reached, buffers):
            self.momentum[k] = buffer


@dataclass
class ClientUpdate:
    """What a client sends back after local training.

    ``state`` is the full local state_dict (it may be the very ``global_state`` object when the
    client had nothing to train: ``num_samples == 0``, no trained groups). ``client_state`` is the
    state the engine keeps for this client and passes back as ``client_state`` the next time it
    participates (``None`` for stateless methods; method ``local`` keeps its model there).
    ``payload`` holds tensors the method's server needs (CMSFed's prototypes and class counts;
    empty for most methods). ``metrics["loss"]`` is the sample-weighted mean local loss (0.0 when
    nothing was trained). It is
    non-finite when training diverged: training stopped at that batch without a step, ``state``
    holds the parameters before it (BatchNorm statistics may already include the bad batch), and
    the engine must stop instead of aggregating."""

    cid: int
    num_samples: int
    state: State
    trained_groups: set[str]
    metrics: dict[str, Any]
    client_state: State | None = None
    payload: State = field(default_factory=dict)


#: what a method's server keeps between rounds (prototypes, scores, distance matrices): named
#: tensors, so that the checkpoint (safetensors) and Flower's ArrayRecords carry it as they are
ServerState = dict[str, Tensor]


@dataclass(frozen=True)
class ClientTask:
    """One client's part of a round plan (``FedAvg.plan_round``): the ``modalities`` it trains
    this round (None: every modality of the model; a subset makes the others absent on its rows,
    so their encoders neither run nor train) and its ``local_epochs`` (None: the run's)."""

    cid: int
    modalities: tuple[str, ...] | None = None
    local_epochs: int | None = None


# spawn-key streams of the run seed used here (training/rounds.py holds streams 1 and 2)
_SAMPLING_STREAM = 0
_PLANNING_STREAM = 3
_HOOK_STREAM = 4


def sample_clients(seed: int, round_: int, num_clients: int, clients_per_round: int) -> list[int]:
    """The clients of round ``round_`` (counted from 1): ``clients_per_round`` of ``num_clients``
    uniformly without replacement, ascending. A pure function of (seed, round), so resuming needs
    no RNG state."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SAMPLING_STREAM, round_)))
    chosen = rng.choice(num_clients, size=min(clients_per_round, num_clients), replace=False)
    return sorted(int(c) for c in chosen)


def planning_rng(seed: int, round_idx: int) -> np.random.Generator:
    """The random stream a method's ``plan_round`` draws from in round ``round_idx`` (0-based):
    a pure function of (run seed, round), independent of the client sampling stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PLANNING_STREAM, round_idx)))


def hook_seed(seed: int) -> int:
    """The seed of the generator ``FedAvg.after_backward`` gets, from the client's update seed
    (a stream of its own, so drawing from it never changes the batch order)."""
    return int(np.random.SeedSequence(seed, spawn_key=(_HOOK_STREAM,)).generate_state(1)[0])


@dataclass
class RoundContext:
    """What a method prepares for one client's local training, before its first step.

    Every method gets these fields; one that needs more declares a subclass as its ``Context``
    and fills it in ``prepare_round`` (FedProx's anchor, FedCMI's teacher). ``task``: the
    client's part of the round plan. ``broadcast``: what the server sent every client this round
    (``FedAvg.broadcast``). ``metrics`` are merged into the update's metrics (JSON values, e.g.
    FedCMI's temperatures); ``payload`` becomes the update's ``payload`` (tensors for the server,
    e.g. CMSFed's prototypes). ``client_state``: what the client kept from its last update (None
    the first time, and for stateless methods); the update returns what it holds after
    ``finish_client``, so a method that keeps per-client state (AGM's running means) replaces it
    there."""

    client: ClientData
    round_idx: int
    task: ClientTask | None = None
    broadcast: ServerState = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    payload: State = field(default_factory=dict)
    client_state: State | None = None


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

    A round, as both engines drive it: the server's ``plan_round`` says which clients train and
    what (``ClientTask``); each client runs ``client_update`` from the global state and what the
    server ``broadcast``; the server's ``server_update`` turns the updates into the new global
    state (``aggregate``) and the new server state. ``client_update``, ``plan_round``,
    ``broadcast`` and ``server_update`` are pure: the result depends only on the arguments, so the
    local engine and a Flower ClientApp / ServerApp call them alike, and a run resumed from its
    checkpoint (global and server state) replays exactly. The method keeps one model on its
    device to train in (built once, by ``model_factory``): each ``client_update`` loads the state
    it starts from into it and returns copies, never views of it. One call at a time per method
    instance (not re-entrant).

    Local training: SGD (TrainConfig) for ``local_epochs`` over the client's rows that have at least
    one of the modalities it trains, in mini-batches from ``epoch_batches`` shuffled by a
    ``torch.Generator`` seeded with ``seed``. Per-sample loss (``local_loss``): a sample with every
    modality: CE(fused) + λ1·Σ_m CE(self_m) (the sum over all M modalities); any other sample with
    at least one modality: CE(routed), i.e. CE(<m>_only) with only m, and with M > 2 modalities
    CE of the routed partial path for a proper subset of two or more (MultimodalNet); the batch
    loss is the mean over the batch's samples (a term defined on some samples only contributes its
    sum over them divided by the batch size).

    Hooks for subclasses, client side, in the order they run:
    ``prepare_round`` (the method's ``Context`` for this client, computed once before training,
    with the model still holding the received state), ``epoch_batches`` (the batches of one local
    epoch; a method can refresh per-epoch state first, e.g. PMR's prototypes),
    ``local_loss`` (the batch objective), ``regularize_gradients`` (add a parameter-space
    regulariser's gradient, e.g. FedProx's proximal term, and return its value),
    ``after_backward`` (modify the gradients before the step, with the batch, the outputs, the
    step index and a seeded generator: OGM-GE's modulation), ``finish_client`` (after the last
    step: what the client reports besides its weights, into ``ctx.metrics`` / ``ctx.payload``).
    Server side: ``init_server_state``, ``plan_round``, ``broadcast``, ``server_update``,
    ``server_metrics``, ``observe_evaluation`` (the round's metrics line, e.g. validation
    accuracies, may change the server state). ``select_specs`` lets a method choose the
    modalities its model is built with, ``network`` its architecture (extra modules, e.g. AUG's
    learners, live in the weights, so every client follows the server's); ``missing_slot`` what
    fills an absent modality's fusion slot (see MultimodalNet); ``client_state_is_model``: the
    client's kept state is its own model, trained from instead of the global one (method
    ``local``). ``total_rounds`` is the run's number of rounds (set by the engine; schedules
    such as warm-ups read it).

    ``trained_groups`` are the parameter groups whose parameters received a gradient from the local
    objective in at least one step (the optimizer skips parameters without one), so an A-only
    client reports {"A.encoder", "fusion"}: it never reaches C_A nor anything of B.
    """

    name = "fedavg"
    Hparams = FedAvgHparams
    Context = RoundContext
    federated = True
    pooled = False
    missing_slot = "infiltration"
    #: whether ``plan_round`` may give a client a subset of its modalities (logged per round)
    selects_modalities = False
    client_state_is_model = False
    total_rounds = 1
    #: the method is defined for exactly two modalities (a model with another count is refused)
    two_modalities = False
    #: the class of model ``network`` builds; a method given another model is refused
    network_class: type[MultimodalNet] = MultimodalNet

    def __init__(self, model_factory: Callable[[], MultimodalNet], train: TrainConfig, hparams: Any,
                 device: torch.device):
        self.model_factory = model_factory
        self.train = train
        self.hparams = hparams
        self.device = torch.device(device)
        self.model = model_factory().to(self.device)
        self.model.missing_slot = self.missing_slot
        self.modalities = self.model.modalities
        if self.two_modalities and len(self.modalities) != 2:
            raise CmiError(f"method {self.name} is defined for two modalities; the model has {list(self.modalities)}.")
        if not isinstance(self.model, self.network_class):
            raise CmiError(f"method {self.name} trains its own network ({type(self).__name__}.network, a "
                           f"{self.network_class.__name__}); got {type(self.model).__name__}.")
        self.groups = self.model.parameter_groups()
        self.param_groups = {key: group for group, keys in self.groups.items() for key in keys}

    @classmethod
    def select_specs(cls, specs: list[ModalitySpec], hparams: Any) -> list[ModalitySpec]:
        """The modality specs this method's model is built with (all of them by default)."""
        return list(specs)

    @classmethod
    def network(cls, specs: Sequence[ModalitySpec], num_classes: int, config: ModelConfig, hparams: Any,
                seed: int = 0) -> MultimodalNet:
        """A freshly initialised model of this method (base: :func:`build_model`; seeded, on the CPU)."""
        return build_model(specs, num_classes, config, seed=seed)

    # ----------------------------------------------------------------------------- client hooks
    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client: ClientData, round_idx: int, *, task: ClientTask | None = None,
                      broadcast: ServerState | None = None, client_state: State | None = None) -> RoundContext:
        """Per-client context for this round (an instance of ``self.Context``), computed before the
        first step; ``model`` holds the state training starts from and ``rows`` are the rows it
        trains on. Subclasses take the keywords as ``**plan`` and pass them on."""
        return self.Context(client=client, round_idx=round_idx, task=task or ClientTask(client.cid),
                            broadcast=broadcast or {}, client_state=client_state)

    def epoch_batches(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, generator: torch.Generator,
                      ctx: RoundContext, epoch: int) -> Iterator[Batch]:
        """The mini-batches of local epoch ``epoch`` (base: ``pool.batches`` over ``rows`` in an
        order drawn from ``generator``)."""
        return pool.batches(rows, self.train.batch_size, generator, device=self.device)

    def held_modalities(self, ctx: RoundContext) -> tuple[str, ...]:
        """The model's modalities the client holds at all (manifest order)."""
        return tuple(m for m in self.modalities if m in ctx.client.modalities)

    def complete_rows(self, outputs: ModelOutputs, ctx: RoundContext) -> Tensor | None:
        """The batch's multimodal rows: those with every modality the client holds (None when it
        holds fewer than two). With two modalities, the rows with both; with M > 2, a client that
        holds only A and B (C absent from its data, or from the whole dataset) trains on its A+B
        rows exactly as in a two-modality run."""
        held = self.held_modalities(ctx)
        if len(held) < 2:
            return None
        if len(held) == len(self.modalities):
            return outputs.valid["fused"]
        mask = outputs.valid[f"{held[0]}_self"]
        for m in held[1:]:
            mask = mask & outputs.valid[f"{m}_self"]
        return mask

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: RoundContext) -> Tensor:
        """The shared objective (class docstring): routed CE + λ1·Σ_m self CE over the held
        modalities on the multimodal rows (``complete_rows``)."""
        valid = outputs.routed_valid
        batch_size = int(valid.sum())
        loss = F.cross_entropy(outputs.routed[valid], batch.labels[valid], reduction="sum")
        complete = self.complete_rows(outputs, ctx)
        if complete is not None and self.hparams.aux_weight and bool(complete.any()):
            labels = batch.labels[complete]
            aux = sum(F.cross_entropy(outputs.self_logits[m][complete], labels, reduction="sum")
                      for m in self.held_modalities(ctx))
            loss = loss + self.hparams.aux_weight * aux
        return loss / batch_size

    def regularize_gradients(self, model: MultimodalNet, ctx: RoundContext) -> Tensor | float:
        """Add a regulariser's gradient to every parameter that has one; return its value, a float
        or a 0-d tensor left on the device (base: none)."""
        return 0.0

    def after_backward(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: RoundContext,
                       step: int, generator: torch.Generator) -> None:
        """Modify the gradients of step ``step`` (counted over the client's whole update) before the
        optimizer step; ``generator`` (on the training device, seeded from the client's seed by
        :func:`hook_seed`) is the only source of randomness allowed here (base: nothing)."""

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: RoundContext) -> None:
        """After the last step, with the trained model: fill ``ctx.metrics`` / ``ctx.payload`` with
        what the client reports besides its weights (base: nothing)."""

    # ----------------------------------------------------------------------------- server hooks
    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        """The server state before round 0 (base: empty; FedAvg keeps nothing but the weights)."""
        return {}

    def plan_round(self, round_idx: int, clients: Sequence[ClientData], clients_per_round: int, seed: int,
                   server_state: ServerState) -> list[ClientTask]:
        """Who trains in round ``round_idx`` (0-based) and what, ascending by client id (base:
        :func:`sample_clients`, every modality, the run's epochs). Draw randomness only from
        :func:`planning_rng` (seed, round_idx)."""
        return [ClientTask(cid) for cid in sample_clients(seed, round_idx + 1, len(clients), clients_per_round)]

    def broadcast(self, server_state: ServerState) -> ServerState:
        """The part of the server state every client of a round receives (base: nothing)."""
        return {}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        """The new (global state, server state) after round ``round_idx`` from its updates (those
        with samples); base: ``aggregate`` and the server state unchanged."""
        return self.aggregate(global_state, updates), server_state

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        """Numbers of the server state worth logging with a round's metrics (base: none)."""
        return {}

    def observe_evaluation(self, server_state: ServerState, record: dict[str, Any]) -> ServerState:
        """The server state after an evaluated round's metrics line ``record`` (``val`` / ``test``
        blocks as in metrics.jsonl); base: unchanged."""
        return server_state

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        """Group-wise weighted average over the updates that trained each group (``average_groups``)."""
        return average_groups(global_state, updates, self.groups)

    # ----------------------------------------------------------------------------- protocol
    def client_update(self, global_state: State, pool: TrainPool, client: ClientData, round_idx: int, seed: int,
                      client_state: State | None = None, *, task: ClientTask | None = None,
                      broadcast: ServerState | None = None) -> ClientUpdate:
        """Train on the client's data starting from ``global_state`` (its ``client_state`` when that
        is its own model, ``client_state_is_model``), as ``task`` asks (default: every modality, the run's epochs)
        with the server's ``broadcast``; deterministic given ``seed``."""
        trains = self.modalities if task is None or task.modalities is None else \
            tuple(m for m in self.modalities if m in task.modalities)
        rows = pool.rows_with_any(client.indices, trains)
        if rows.shape[0] == 0:
            return ClientUpdate(cid=client.cid, num_samples=0, state=global_state, trained_groups=set(),
                                metrics={"loss": 0.0}, client_state=client_state)
        model = self.model
        model.load_state_dict(client_state if client_state is not None and self.client_state_is_model else global_state)
        ctx = self.prepare_round(model, global_state, pool, rows, client, round_idx, task=task, broadcast=broadcast,
                                 client_state=client_state)
        model.train()
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        optimizer = MomentumSGD([p for _, p in params], self.train)
        generator = torch.Generator().manual_seed(int(seed))
        hook_generator = torch.Generator(device=self.device).manual_seed(hook_seed(seed))
        epochs = task.local_epochs if task is not None and task.local_epochs else self.train.local_epochs
        trained: set[str] = set()
        loss_sum, seen, step = 0.0, 0, 0
        for epoch in range(epochs):
            for batch in self.epoch_batches(model, pool, rows, generator, ctx, epoch):
                if trains != self.modalities:
                    batch.present = {m: p if m in trains else torch.zeros_like(p) for m, p in batch.present.items()}
                optimizer.zero_grad()
                outputs = model(batch.inputs, batch.present)
                loss = self.local_loss(model, outputs, batch, ctx)
                loss.backward()
                regularizer = self.regularize_gradients(model, ctx)
                self.after_backward(model, outputs, batch, ctx, step, hook_generator)
                value = float(loss.detach() + regularizer)   # the step's one host sync
                if not math.isfinite(value):
                    return self._update(client, rows, model, trained, value, ctx)
                trained.update(self.param_groups[name] for name, p in params if p.grad is not None)
                optimizer.step()
                loss_sum += value * batch.labels.shape[0]
                seen += batch.labels.shape[0]
                step += 1
        self.finish_client(model, pool, rows, ctx)
        return self._update(client, rows, model, trained, loss_sum / seen, ctx)

    def _update(self, client: ClientData, rows: np.ndarray, model: MultimodalNet, trained: set[str],
                loss: float, ctx: RoundContext) -> ClientUpdate:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}   # the model is reused
        return ClientUpdate(cid=client.cid, num_samples=int(rows.shape[0]), state=state, trained_groups=trained,
                            metrics={"loss": loss, **ctx.metrics}, client_state=ctx.client_state,
                            payload=dict(ctx.payload))


def weighted_mean(pairs: Iterable[tuple[float, Sequence[float]]], size: int) -> Tensor:
    """Σ w·v / Σ w over (weight w, vector v of ``size`` numbers) pairs, as a (size,) float64
    tensor; NaN everywhere when the weights sum to 0."""
    total, weight = torch.zeros(size, dtype=torch.float64), 0.0
    for w, values in pairs:
        total += w * torch.tensor(values, dtype=torch.float64)
        weight += w
    return total / weight if weight else torch.full((size,), float("nan"), dtype=torch.float64)


class ModalityRoundMean:
    """Mixin (before FedAvg in the bases) for a method whose server keeps and logs one number per
    modality each round, computed from the round's client reports by ``round_mean`` ((M,) float64,
    NaN when no client reported one). It is kept under ``round_mean_key`` in the server state (NaN
    before the first round) and logged as ``<metric_prefix>_<modality>`` (null for NaN)."""

    round_mean_key: str
    metric_prefix: str

    def round_mean(self, updates: list[ClientUpdate]) -> Tensor:
        raise NotImplementedError

    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        return {self.round_mean_key: torch.full((len(self.modalities),), float("nan"), dtype=torch.float64)}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        return self.aggregate(global_state, updates), {**server_state, self.round_mean_key: self.round_mean(updates)}

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        return {f"{self.metric_prefix}_{m}": float(v) if math.isfinite(float(v)) else None
                for m, v in zip(self.modalities, server_state[self.round_mean_key])}
