"""Data Remixing (Ma, Chen, Deng; ICML 2025, "Improving Multimodal Learning Balance and Sufficiency
through Data Remixing"), in federated form: after a warm-up, every client splits its multimodal
samples by modality each local epoch and trains modality-pure batches. Stateless across rounds;
the server only logs the assignment shares. Definition: ``shared/spec/methods.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientUpdate, FedAvg, FedAvgHparams, ModalityRoundMean, RoundContext, TrainPool,
    weighted_mean,
)
from pipelines.models import ModelOutputs, MultimodalNet


@dataclass(frozen=True)
class RemixHparams(FedAvgHparams):
    """aux_weight: λ1, here the weight of the self-classifier losses during the warm-up (0.5, the
    paper's L = CE(z_F) + 0.5·CE(z_A) + 0.5·CE(z_B); overrides FedAvg's 2.0). warmup_rounds: rounds
    trained with that objective before remixing starts (None: 10% of the run's rounds, at least 1).
    gamma: γ, weight of the kept modality's self-classifier loss on remixed batches (1.0)."""

    aux_weight: float = 0.5
    warmup_rounds: int | None = None
    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_rounds is not None and self.warmup_rounds < 0:
            raise CmiError(f"remix.warmup_rounds must be >= 0 (or unset for 10% of the rounds), "
                           f"got {self.warmup_rounds}.")
        if self.gamma < 0:
            raise CmiError(f"remix.gamma must be >= 0, got {self.gamma}.")


@dataclass
class RemixBatch(Batch):
    """A modality-pure batch after the warm-up: only ``modality`` is present on its rows (the
    other is marked absent, so its encoder neither runs nor trains); ``remixed`` (n,) bool marks
    the rows that are multimodal in the pool (they take the γ·CE(z_m) term; the others are the
    client's own single-modality samples)."""

    modality: str = ""
    remixed: Tensor | None = None


@dataclass
class RemixContext(RoundContext):
    """``shares``: per remixed local epoch, [share assigned to A, share assigned to B] of the
    client's multimodal samples; ``scored``: how many multimodal samples each epoch scored."""

    shares: list[list[float]] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(softmax(logits) ‖ uniform) per row, (n,): Σ_c p_c·log p_c + log C (natural log)."""
    log_p = logits.log_softmax(dim=1)
    return (log_p.exp() * log_p).sum(dim=1) + math.log(logits.shape[1])


def assign_to_first(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """(n,) bool: True where the sample goes to the first modality A, i.e. where A is the LESS
    confident one, KL(p_A ‖ U) < KL(p_B ‖ U); ties go to B (as the authors' ``if KL_a < KL_v``)."""
    return kl_to_uniform(logits_a) < kl_to_uniform(logits_b)


class Remix(ModalityRoundMean, FedAvg):
    """Data Remixing, client side, exactly as the spec (``shared/spec/methods.md``), two modalities.

    Warm-up (rounds ``round_idx < warmup``, warmup = ``warmup_rounds`` or max(1, ⌊R/10⌋) with
    R = ``total_rounds``): FedAvg's shared objective with λ1 = ``aux_weight`` = 0.5, i.e. on
    multimodal samples CE(z_F) + 0.5·CE(z_A) + 0.5·CE(z_B), on single-modality samples CE(<m>_only).

    After the warm-up, at the start of every local epoch (``epoch_batches``) the client scores each
    of its multimodal samples with the current local model in eval mode without gradient:
    KL_m = KL(softmax(C_m(S_m h_m)) ‖ uniform), and assigns the sample to A when KL_A < KL_B (A is
    the less confident modality), else to B. The epoch is then: every B batch, then every A batch.
    A B batch holds B-assigned multimodal samples and the client's own B-only samples, shuffled
    together by the epoch's generator (the B order is drawn first, then the A order), in batches
    of ``batch_size``; A is marked absent on every row, so E_A, S_A, I_A and C_A do not run and
    get no gradient (A's payload is not even copied to the device: a zero-stride placeholder of
    the right shape stands in). Loss of a B batch, summed over rows and divided by its size:
    CE(F(0, S_B h_B)) on every row (the model's B-only path with ``missing_slot = "zeros"``) plus
    γ·CE(C_B(S_B h_B)) on the remixed (pool-multimodal) rows only. A batches symmetrically.

    Single-modality samples (an interpretation; the spec does not place them): they join the
    batches of the modality they have and train "as usual", CE(F(0, u_m)) without the γ term,
    exactly their FedAvg loss under the zero slot. A client without multimodal samples therefore
    trains as FedAvg (with zero slots).

    Reported per client (``metrics``): ``remix_shares`` [[share A, share B] per remixed epoch] of
    its multimodal samples and ``remix_scored`` (that count per epoch); absent in warm-up rounds.
    Server state ``shares`` (2,): the round's shares, each client's epochs weighted by the number
    of samples they scored (NaN in rounds without remixing); ``server_metrics`` gives them as
    ``share_<A>`` / ``share_<B>`` (None in such rounds). No state across rounds: the assignment
    is recomputed every epoch. Aggregation: modality-wise FedAvg.

    ``missing_slot = "zeros"`` also makes the evaluated <m>_only paths F(0, u_A) / F(0, u_B)
    (I_m is never used). Differences from the authors' code: their zeroed modality's encoder
    still ran (its features were zeroed in place: no gradient, but BatchNorm statistics moved);
    here it does not run, as the spec says. Their scoring log uses base 2 and clips p at 1e-9;
    neither changes which KL is lower."""

    name = "remix"
    round_mean_key, metric_prefix = "shares", "share"
    two_modalities = True
    Hparams = RemixHparams
    Context = RemixContext
    missing_slot = "zeros"

    def warmup_rounds(self) -> int:
        """Rounds of warm-up: ``hparams.warmup_rounds``, or 10% of ``total_rounds`` (at least 1)."""
        if self.hparams.warmup_rounds is not None:
            return int(self.hparams.warmup_rounds)
        return max(1, int(self.total_rounds) // 10)

    # ------------------------------------------------------------------ client
    @torch.no_grad()
    def assign(self, model: MultimodalNet, pool: TrainPool, rows: Tensor) -> Tensor:
        """(n,) bool over the multimodal pool ``rows``: True = assigned to A (the first modality),
        from the self classifiers of ``model`` in eval mode (its mode is restored after)."""
        a, b = self.modalities
        training = model.training
        model.eval()
        parts = []
        for batch in pool.batches(rows.numpy(), self.train.batch_size, None, shuffle=False, device=self.device):
            outputs = model(batch.inputs, batch.present)
            parts.append(assign_to_first(outputs.self_logits[a], outputs.self_logits[b]).cpu())
        model.train(training)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)

    def epoch_batches(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, generator: torch.Generator,
                      ctx: RemixContext, epoch: int) -> Iterator[Batch]:
        if ctx.round_idx < self.warmup_rounds():
            return super().epoch_batches(model, pool, rows, generator, ctx, epoch)
        a, b = self.modalities
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        has_a, has_b = pool.present[a][idx], pool.present[b][idx]
        both = idx[has_a & has_b]
        to_a = self.assign(model, pool, both)
        if both.numel():
            share_a = float(to_a.sum()) / both.numel()
            ctx.shares.append([share_a, 1.0 - share_a])
            ctx.scored.append(int(both.numel()))
        phases = []
        for m, members in ((b, torch.cat([both[~to_a], idx[has_b & ~has_a]])),
                           (a, torch.cat([both[to_a], idx[has_a & ~has_b]]))):
            phases.append((m, members[torch.randperm(members.numel(), generator=generator)]))
        return self._pure_batches(pool, phases)

    def _pure_batches(self, pool: TrainPool, phases: list[tuple[str, Tensor]]) -> Iterator[RemixBatch]:
        """The batches of each (modality, ordered rows) phase in turn, the other modality absent."""
        size = self.train.batch_size
        for m, order in phases:
            (other,) = [o for o in self.modalities if o != m]
            for start in range(0, order.numel(), size):
                rows = order[start:start + size]
                n = rows.numel()
                placeholder = pool.inputs[other]
                yield RemixBatch(
                    inputs={m: pool.inputs[m].index_select(0, rows).to(self.device),
                            other: torch.zeros((), dtype=placeholder.dtype, device=self.device).expand(
                                n, *placeholder.shape[1:])},
                    present={m: torch.ones(n, dtype=torch.bool, device=self.device),
                             other: torch.zeros(n, dtype=torch.bool, device=self.device)},
                    labels=pool.labels.index_select(0, rows).to(self.device),
                    indices=rows.to(self.device),
                    modality=m,
                    remixed=pool.present[other].index_select(0, rows).to(self.device),
                )

    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: RoundContext) -> Tensor:
        if not isinstance(batch, RemixBatch):
            return super().local_loss(model, outputs, batch, ctx)     # warm-up: λ1 = aux_weight
        valid = outputs.routed_valid
        loss = F.cross_entropy(outputs.routed[valid], batch.labels[valid], reduction="sum")
        remixed = batch.remixed & valid
        if self.hparams.gamma and bool(remixed.any()):
            loss = loss + self.hparams.gamma * F.cross_entropy(
                outputs.self_logits[batch.modality][remixed], batch.labels[remixed], reduction="sum")
        return loss / valid.sum()

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: RemixContext) -> None:
        if ctx.scored:
            ctx.metrics["remix_shares"] = ctx.shares
            ctx.metrics["remix_scored"] = ctx.scored

    def round_mean(self, updates: list[ClientUpdate]) -> Tensor:
        """The fractions of all samples scored in the round's remixed epochs assigned to A and to B
        (Σ n·share / Σ n, n: the samples an epoch scored)."""
        return weighted_mean(((n, share) for u in updates for share, n in
                              zip(u.metrics.get("remix_shares") or [], u.metrics.get("remix_scored") or [])),
                             len(self.modalities))
