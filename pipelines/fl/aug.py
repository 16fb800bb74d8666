"""AUG, sustained boosting with adaptive classifier assignment (Jiang, Huang, Yang; NeurIPS 2025,
"Rethinking Multimodal Learning from the Perspective of Mitigating Classification Ability
Disproportion"), in federated form: the server grows the weak modality's list of learners and
every client follows, because the learners live in the weights. Definition:
``shared/spec/methods.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.artifacts import eval_paths
from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientUpdate, FedAvg, FedAvgHparams, RoundContext, ServerState, State, TrainPool,
)
from pipelines.fl.measures import ground_truth_probability
from pipelines.models import ModelConfig, ModelOutputs, MultimodalNet
from pipelines.models.net import initialize
from pipelines.shards import ModalitySpec

#: state_dict key of the active learner counts (int64, (2,), modality order); its own group
COUNTS_KEY = "learners"
#: parameter group of :data:`COUNTS_KEY`: no client trains it, the server writes it
ARCHITECTURE_GROUP = "architecture"
#: parameter group of the output layer shared by every learner of both modalities
HEAD_GROUP = "head"


@dataclass(frozen=True)
class AUGHparams(FedAvgHparams):
    """lam: λ of the residual weight 1 − λ·sg(softmax(Z^(n−1))[y]) (0.5; in [0, 1], so the
    weight stays in [0, 1]). tau: τ, the dead band of the confidence ratio r = s_A/s_B: a learner
    is added to B when r > 1+τ, to A when r < 1−τ (0.01). alpha: α of the prediction
    α·Z_A + (1−α)·Z_B (0.4). max_added: the most learners added over the run, both modalities
    together (10); the network preallocates 1 + max_added learners per modality.
    ``aux_weight`` (inherited) is not used: AUG's objective replaces the shared one."""

    lam: float = 0.5
    tau: float = 0.01
    alpha: float = 0.4
    max_added: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.lam <= 1:
            raise CmiError(f"aug.lam must be in [0, 1], got {self.lam}.")
        if self.tau < 0:
            raise CmiError(f"aug.tau must be >= 0, got {self.tau}.")
        if not 0 <= self.alpha <= 1:
            raise CmiError(f"aug.alpha must be in [0, 1], got {self.alpha}.")
        if isinstance(self.max_added, bool) or not isinstance(self.max_added, int) or self.max_added < 0:
            raise CmiError(f"aug.max_added must be an integer >= 0, got {self.max_added!r}.")


@dataclass
class AUGOutputs(ModelOutputs):
    """:class:`ModelOutputs` plus ``learner_logits``: m -> (B, n_m, C) the logits z_m^(j) of each
    of m's active learners (zeros on rows without m)."""

    learner_logits: dict[str, Tensor] = field(default_factory=dict)


def _place(rows: Tensor, mask: Tensor) -> Tensor:
    """Values computed on ``mask``'s rows placed into a (B, ...) tensor, zeros elsewhere."""
    if rows.shape[0] == mask.shape[0]:
        return rows
    return rows.new_zeros((mask.shape[0], *rows.shape[1:])).index_put((mask,), rows)


class AUGNet(MultimodalNet):
    """AUG's network: per modality m the encoder E_m and self projector S_m of
    :class:`MultimodalNet` (u_m = S_m h_m, ``features``), then ``slots`` preallocated learners
    Linear(d → d/2) + ReLU (``branches.<m>.learners.<j>``), of which the first ``learners[k]``
    are active, and ONE output layer ``head`` (d/2 → C) shared by every learner of both
    modalities: z_m^(j) = head(ReLU(L_m^(j) u_m)), Z_m = Σ_{j ≤ n_m} z_m^(j). No fusion head, no
    infiltration projector, no per-modality classifier C_m (``model.fusion`` is ignored,
    ``model.projector`` shapes S_m).

    The active counts are the int64 buffer ``learners`` (2,), modality order: the architecture
    the server decided travels in the weights, so every client, the evaluation, the checkpoint
    and the Flower engine follow it. Inactive learners take no part in the graph.

    Paths: ``fused`` = α·Z_A + (1−α)·Z_B on rows with both modalities; ``<m>_only`` = ``<m>_self``
    = Z_m on the rows with m (a row with one modality is predicted by its Z_m: without a fusion
    head there is nothing to fill the missing slot with, and α·Z_m has the same argmax);
    ``routed``: fused on rows with both, Z_m on rows with only m. ``self_logits`` = {m: Z_m},
    ``infiltration_logits`` = {}.

    Parameter groups: ``<m>.encoder`` (E_m, S_m), ``<m>.classifier`` (m's learners), ``head``
    (the shared output layer), ``architecture`` (``learners``)."""

    def __init__(self, specs: Sequence[ModalitySpec], num_classes: int, cfg: ModelConfig, alpha: float, slots: int):
        if len(specs) != 2:
            raise CmiError(f"method aug is defined for two modalities; got {[s.name for s in specs]}.")
        super().__init__(specs, num_classes, cfg)
        self.alpha = float(alpha)
        self.slots = int(slots)
        hidden = max(1, cfg.embed_dim // 2)
        self.fusion = None
        for branch in self.branches.values():
            branch.infiltration_projector = None
            branch.classifier = None
            branch.learners = nn.ModuleList(nn.Linear(cfg.embed_dim, hidden) for _ in range(self.slots))
        self.head = nn.Linear(hidden, num_classes)
        self.register_buffer(COUNTS_KEY, torch.ones(len(specs), dtype=torch.int64))

    def parameter_groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key in self.state_dict():
            top = key.split(".", 1)[0]
            if key == COUNTS_KEY:
                group = ARCHITECTURE_GROUP
            elif top == "head":
                group = HEAD_GROUP
            else:
                modality, part = key.split(".", 2)[1:]
                group = f"{modality}.classifier" if part.startswith("learners.") else f"{modality}.encoder"
            groups.setdefault(group, []).append(key)
        return groups

    def active_learners(self) -> list[int]:
        """The active learner count of each modality (model order), checked against the slots."""
        counts = [int(n) for n in self.learners.tolist()]
        if any(not 1 <= n <= self.slots for n in counts):
            raise CmiError(f"aug: learner counts {counts} outside 1..{self.slots}; the state does not belong to "
                           "this network (aug.max_added changed?).")
        return counts

    def learner_outputs(self, m: str, u: Tensor, n: int) -> Tensor:
        """(rows, n, C): z^(j) = head(ReLU(W_j u + b_j)) for m's first ``n`` learners."""
        active = self.branches[m].learners[:n]
        weight = torch.stack([layer.weight for layer in active])       # (n, h, d)
        bias = torch.stack([layer.bias for layer in active])           # (n, h)
        hidden = torch.relu(torch.einsum("rd,nhd->rnh", u, weight) + bias)
        return self.head(hidden)

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> AUGOutputs:
        a, b = self.modalities
        masks = {m: present[m].bool() for m in self.modalities}
        batch = masks[a].shape[0]
        no_logits = masks[a].new_zeros((batch, self.num_classes), dtype=torch.float32)
        counts = dict(zip(self.modalities, self.active_learners()))
        features: dict[str, Tensor] = {}
        learner_logits: dict[str, Tensor] = {}
        totals: dict[str, Tensor] = {}
        for m, branch in self.branches.items():
            if not bool(masks[m].any()):
                features[m] = no_logits.new_zeros((batch, branch.learners[0].in_features))
                learner_logits[m] = no_logits.new_zeros((batch, counts[m], self.num_classes))
                totals[m] = no_logits
                continue
            x = inputs[m] if bool(masks[m].all()) else inputs[m].index_select(0, masks[m].nonzero().squeeze(1))
            u = branch.self_projector(branch.encoder(x))
            z = self.learner_outputs(m, u, counts[m])
            features[m] = _place(u, masks[m])
            learner_logits[m] = _place(z, masks[m])
            totals[m] = _place(z.sum(dim=1), masks[m])
        both = masks[a] & masks[b]
        fused = torch.where(both.unsqueeze(1), self.alpha * totals[a] + (1 - self.alpha) * totals[b], no_logits)
        # Z_m is zero where m is absent: on a row with only one modality the sum is its Z_m
        routed = torch.where(both.unsqueeze(1), fused, totals[a] + totals[b])
        names = eval_paths([a, b])
        tensors = [fused, totals[a], totals[b], totals[a], totals[b]]
        valid = [both, masks[a], masks[b], masks[a], masks[b]]
        return AUGOutputs(routed=routed, routed_valid=masks[a] | masks[b], self_logits=dict(totals),
                          infiltration_logits={}, paths=dict(zip(names, tensors)), valid=dict(zip(names, valid)),
                          features=features, learner_logits=learner_logits)


def residual_weight(previous: Tensor, labels: Tensor, lam: float) -> Tensor:
    """(rows,) 1 − λ·softmax(Z^(n−1))[y], without gradient."""
    return 1 - lam * ground_truth_probability(previous.detach(), labels)


def boosting_loss(learner_logits: Tensor, labels: Tensor, lam: float, mask: Tensor | None = None) -> Tensor:
    """L_m, the mean over the rows of ``learner_logits`` (rows, n, C) (those where ``mask``, when
    given, at least one): n = 1: CE(Z^(1), y); n > 1: CE(Z^(n), y) + CE(Z^(n−1), y) −
    (1 − λ·sg(softmax(Z^(n−1))[y]))·log softmax(z^(n))[y], with Z^(t) = Σ_{j ≤ t} z^(j).
    Masked rows weigh nothing (no boolean indexing: no host sync)."""
    n = learner_logits.shape[1]
    total = learner_logits.sum(dim=1)
    per_row = F.cross_entropy(total, labels, reduction="none")
    if n > 1:
        previous = total - learner_logits[:, -1]
        newest = F.log_softmax(learner_logits[:, -1], dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        per_row = (per_row + F.cross_entropy(previous, labels, reduction="none")
                   - residual_weight(previous, labels, lam) * newest)
    if mask is None:
        return per_row.mean()
    weights = mask.to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum().clamp_min(1)


def learner_growth(counts: Sequence[int], s_a: float, s_b: float, tau: float, max_added: int) -> list[int]:
    """The learner counts after one check: r = s_A/s_B; r > 1+τ -> one more learner for B,
    r < 1−τ -> one more for A, else none; none once ``max_added`` learners were added in all
    (Σ counts − 2), or without confidences (s_A = s_B = 0, non-finite). s_B = 0 < s_A: r = ∞."""
    counts = [int(n) for n in counts]
    if sum(counts) - len(counts) >= max_added or not (math.isfinite(s_a) and math.isfinite(s_b)):
        return counts
    if s_a <= 0 and s_b <= 0:
        return counts
    ratio = math.inf if s_b <= 0 else s_a / s_b
    if ratio > 1 + tau:
        counts[1] += 1
    elif ratio < 1 - tau:
        counts[0] += 1
    return counts


@dataclass
class AUGBatch(Batch):
    """One pass of a mini-batch: ``modality`` is the only one present (the other's presence is
    all False); ``complete`` (B,) marks the rows that had both modalities in the batch."""

    modality: str
    complete: Tensor


@dataclass
class AUGContext(RoundContext):
    """``confidence``: m -> Σ softmax(Z_m)[y] over the multimodal rows of every pass of m so far
    (0-d float64 on the training device)."""

    confidence: dict[str, Tensor] = field(default_factory=dict)


class AUG(FedAvg):
    """AUG, federated. Network: :class:`AUGNet` (``network``), with 1 + max_added learners per
    modality preallocated and initialised from the run's seeded init generator, so every server
    and client holds the same ones; the active counts are the ``learners`` buffer of the weights.

    Client. One step per modality per mini-batch, A first: ``epoch_batches`` yields each batch
    twice, first with only A present (B's presence set False, so B's encoder does not run and
    none of B's parameters gets a gradient), then with only B present (a pass without rows of its
    modality is skipped), and ``local_loss`` is the spec's L_m for the modality of the pass
    (:func:`boosting_loss`, mean over the batch's rows that have m; the per-modality learners
    include every active one: CE(Z^(n−1)) trains the earlier learners too). The objective
    REPLACES the shared one (no fusion head, no C_m; ``aux_weight`` is unused). The optimiser is
    the base's, built each round over every parameter, so a learner the server activated trains
    from the next client update on; inactive learners get no gradient and SGD leaves them (and
    their weight decay) alone. The reported ``loss`` is the mean of the passes' L_m (the base
    loop weighs each pass by its batch's size).
    The client also reports ``confidence`` {m: s_m}: s_m = Σ softmax(Z_m)[y] over its rows with
    BOTH modalities (so that s_A and s_B are sums over the same samples), from the logits of every
    pass of m in the round (before that step's update, as the reference code sums them over its
    training epoch).

    Server. Modality-wise averaging as FedAvg (learners with their modality's ``<m>.classifier``
    group, the shared ``head`` over every client that trained it; the ``architecture`` group is
    never trained, so averaging keeps it). After round t (counted from 1) with t a multiple of
    max(1, ⌊R/10⌋) (R = ``total_rounds``) it sums the round's clients' confidences,
    r = s_A/s_B, and :func:`learner_growth` writes the new counts into the new global state
    (r > 1+τ: B gets a learner, r < 1−τ: A does; at most ``max_added`` in all). Server state:
    ``learners`` (a copy of the counts, for ``server_metrics``) and ``confidence`` (s_A, s_B of
    the last round).

    Differences from the spec / reference, stated: the learners read u_m = S_m h_m (the
    framework's feature), not the raw encoder output; the reference also checks after its first
    epoch, here only rounds that are multiples of the interval do; the comparison uses the check
    round's confidences (the reference: the check epoch's); rows with one modality train their
    modality's learners but do not enter s_A/s_B."""

    name = "aug"
    two_modalities = True
    Hparams = AUGHparams
    Context = AUGContext
    network_class = AUGNet

    @classmethod
    def network(cls, specs: Sequence[ModalitySpec], num_classes: int, config: ModelConfig, hparams: Any,
                seed: int = 0) -> AUGNet:
        """An :class:`AUGNet` with 1 + ``max_added`` learners per modality, one active each, every
        parameter initialised from a generator seeded with ``seed`` (the global RNG untouched)."""
        if len(specs) != 2:
            raise CmiError(f"method aug is defined for two modalities; got {[s.name for s in specs]}.")
        with torch.random.fork_rng(devices=[]):
            net = AUGNet(specs, num_classes, config, alpha=hparams.alpha, slots=1 + hparams.max_added)
        generator = torch.Generator().manual_seed(int(seed))
        for child in net.children():   # the root holds only the counts buffer, set at construction
            initialize(child, generator)
        return net

    @property
    def check_interval(self) -> int:
        """Rounds between two learner checks: max(1, ⌊R/10⌋)."""
        return max(1, int(self.total_rounds) // 10)

    # ----------------------------------------------------------------------------- client
    def prepare_round(self, model: MultimodalNet, global_state: State, pool: TrainPool, rows: np.ndarray,
                      client, round_idx: int, **plan) -> AUGContext:
        ctx = super().prepare_round(model, global_state, pool, rows, client, round_idx, **plan)
        ctx.confidence = {m: torch.zeros((), dtype=torch.float64, device=self.device) for m in self.modalities}
        return ctx

    def epoch_batches(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, generator: torch.Generator,
                      ctx: AUGContext, epoch: int) -> Iterator[Batch]:
        a, b = self.modalities
        trains = self.modalities if ctx.task is None or ctx.task.modalities is None else \
            tuple(m for m in self.modalities if m in ctx.task.modalities)
        for batch in super().epoch_batches(model, pool, rows, generator, ctx, epoch):
            complete = batch.present[a].bool() & batch.present[b].bool()
            for m in trains:
                if not bool(batch.present[m].any()):
                    continue
                present = {o: p if o == m else torch.zeros_like(p) for o, p in batch.present.items()}
                yield AUGBatch(inputs=batch.inputs, present=present, labels=batch.labels, indices=batch.indices,
                               modality=m, complete=complete)

    def local_loss(self, model: MultimodalNet, outputs: AUGOutputs, batch: AUGBatch, ctx: AUGContext) -> Tensor:
        m = batch.modality
        has = outputs.valid[f"{m}_self"]
        logits = outputs.learner_logits[m]          # zeros on the rows without m, which weigh nothing
        with torch.no_grad():
            confident = (batch.complete & has).to(torch.float64)
            ctx.confidence[m] += (ground_truth_probability(logits.sum(dim=1), batch.labels) * confident).sum()
        return boosting_loss(logits, batch.labels, self.hparams.lam, mask=has)

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: AUGContext) -> None:
        ctx.metrics["confidence"] = {m: float(s) for m, s in ctx.confidence.items()}

    # ----------------------------------------------------------------------------- server
    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        return {"learners": torch.ones(len(self.modalities), dtype=torch.int64),
                "confidence": torch.zeros(len(self.modalities), dtype=torch.float64)}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        new_global = self.aggregate(global_state, updates)
        sums = torch.zeros(len(self.modalities), dtype=torch.float64)
        for u in updates:
            reported = u.metrics.get("confidence") or {}
            sums += torch.tensor([float(reported.get(m, 0.0)) for m in self.modalities], dtype=torch.float64)
        counts = [int(n) for n in global_state[COUNTS_KEY].tolist()]
        if (round_idx + 1) % self.check_interval == 0:
            counts = learner_growth(counts, float(sums[0]), float(sums[1]), self.hparams.tau, self.hparams.max_added)
        current = global_state[COUNTS_KEY]
        new_global[COUNTS_KEY] = torch.tensor(counts, dtype=current.dtype, device=current.device)
        return new_global, {"learners": torch.tensor(counts, dtype=torch.int64), "confidence": sums}

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        s_a, s_b = (float(s) for s in server_state["confidence"])
        out: dict[str, Any] = {f"learners_{m}": float(n) for m, n in zip(self.modalities,
                                                                       server_state["learners"].tolist())}
        out["confidence_ratio"] = s_a / s_b if s_b > 0 else None
        return out
