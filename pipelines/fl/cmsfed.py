"""CMSFed / BMSFed, client-wise modality selection (Fan et al., arXiv 2401.00403; ECCV 2024):
the server decides each round which clients train and which of them train only the globally
weak modality. Definition: ``shared/spec/methods.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch, ClientData, ClientTask, ClientUpdate, FedAvg, FedAvgHparams, RoundContext, ServerState, State, TrainPool,
    planning_rng,
)
from pipelines.fl.measures import (
    PROB_EPS, class_means, collect_features, dominance_ratio, prototype_accuracy, prototype_logits,
)
from pipelines.models import ModelOutputs, MultimodalNet

#: seed of the count-sketch hashing of the encoder deltas (fixed: every server sketches alike)
SKETCH_SEED = 0


@dataclass(frozen=True)
class CMSFedHparams(FedAvgHparams):
    """proto_weight: λ, weight of the prototype cross-entropy (2.0). theta: θ, how far a client's
    own imbalance ρ_k must lean the global way for it to train only the weak modality (1.5).
    sketch_dim: buckets of the count-sketch the server keeps of each client's encoder deltas
    (1024: ~12 KB per client instead of the model's size; distances between sketches estimate
    the deltas' distances without bias)."""

    proto_weight: float = 2.0
    theta: float = 1.5
    sketch_dim: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.proto_weight < 0 or self.theta < 1 or self.sketch_dim < 1:
            raise CmiError(f"cmsfed needs proto_weight >= 0, theta >= 1 and sketch_dim >= 1; got {self.proto_weight}, "
                           f"{self.theta}, {self.sketch_dim}.")


def global_imbalance(rho: np.ndarray, samples: np.ndarray) -> float | None:
    """ρ̄ = Σ n_k ρ_k / Σ n_k over the clients whose ρ_k is known (finite); None when none is."""
    known = np.isfinite(rho) & (samples > 0)
    if not known.any():
        return None
    return float(np.dot(samples[known], rho[known]) / samples[known].sum())


def facility_location_selection(dist: np.ndarray, count: int, rng: np.random.Generator,
                                weak_dist: np.ndarray | None = None,
                                weak_ok: np.ndarray | None = None) -> list[tuple[int, bool]]:
    """Stochastic greedy facility location: ``count`` picks, (client, weak_only), in pick order.

    Each pick draws max(count, ⌊0.1·N⌋) candidates (without replacement) from the unpicked
    clients and takes the one that lowers Σ_i min_{j∈S} dist[i, j] most (S: the multimodal
    picks so far; the first pick minimises Σ_i dist[i, c]). With ``weak_dist``, the candidate
    best under ``weak_dist`` (its own running minima, over the weak-only picks) is picked as
    weak-only when ``weak_ok`` holds for it; otherwise the multimodal pick is taken. Ties go to
    the earlier drawn candidate."""
    n = dist.shape[0]
    unpicked = np.ones(n, dtype=bool)
    nearest = np.full(n, np.inf)        # min over the multimodal picks, per client i
    nearest_weak = np.full(n, np.inf)   # min over the weak-only picks
    draw = max(count, int(0.1 * n))
    picks: list[tuple[int, bool]] = []
    for _ in range(min(count, n)):
        remaining = np.flatnonzero(unpicked)
        candidates = rng.choice(remaining, size=min(draw, remaining.size), replace=False)
        pick = (int(candidates[np.argmin(np.minimum(nearest[:, None], dist[:, candidates]).sum(axis=0))]), False)
        if weak_dist is not None:
            weak = int(candidates[np.argmin(np.minimum(nearest_weak[:, None], weak_dist[:, candidates]).sum(axis=0))])
            if weak_ok[weak]:
                pick = (weak, True)
        cid, weak_only = pick
        if weak_only:
            nearest_weak = np.minimum(nearest_weak, weak_dist[:, cid])
        else:
            nearest = np.minimum(nearest, dist[:, cid])
        unpicked[cid] = False
        picks.append(pick)
    return picks


def aggregate_prototypes(prototypes: Tensor, known: Tensor, local: Sequence[Tensor], counts: Sequence[Tensor]
                         ) -> tuple[Tensor, Tensor]:
    """New global prototypes (M, C, d) and their ``known`` mask (M, C): per modality and class
    the count-weighted mean of this round's clients' prototypes (``local`` (M, C, d), ``counts``
    (M, C) each: a class a client lacks has weight 0); a class no client of the round has keeps
    its previous prototype."""
    total = torch.stack(list(counts)).double().sum(dim=0)                              # (M, C)
    weighted = sum(p.double() * c.double().unsqueeze(-1) for p, c in zip(local, counts))
    fresh = total > 0
    mean = weighted / total.clamp_min(1).unsqueeze(-1)
    return torch.where(fresh.unsqueeze(-1), mean, prototypes.double()).float(), known | fresh


class CMSFed(FedAvg):
    """BMSFed, the ECCV version of CMSFed, exactly as the spec (``shared/spec/methods.md``).

    Server state (``init_server_state``; checkpointed, so ``--resume`` continues exactly):
    ``sketch`` (K, 3, s) count-sketches of each client's last encoder deltas (both encoders, A's,
    B's), ``dist`` (3, K, K) the Euclidean distances D, D_A, D_B between them, ``rho`` (K,) the
    clients' imbalances (NaN: unknown or a one-modality client), ``samples`` (K,), ``class_counts``
    (K, C), ``prototypes`` (M, C, d) the global class prototypes with ``known`` (M, C).

    Round 0: every client trains one epoch (the real learning rate), filling all of the above.
    Then each round: ρ̄ = Σ n_k ρ_k / Σ n_k; ``clients_per_round`` picks by stochastic greedy
    facility location on D (:func:`facility_location_selection`); when ρ̄ > 1 (A dominant) the best
    candidate under D_B trains B only if its ρ_k > θ (mirror: ρ̄ < 1, D_A, ρ_k < 1/θ).

    Client: the shared objective plus λ·[CE(s_weak) on multimodal samples, weak = B when the
    batch's r_b = Σ softmax(s_A)[y] / Σ softmax(s_B)[y] > 1, A when r_b < 1; CE(s_m) on samples
    with only m], s_m = −‖u_m − P̄^m_c‖₂ with the broadcast global prototypes (from round 1 on).
    A weak-only client's other modality is absent on its rows, and the missing fusion slot is
    zeros (``missing_slot``): it trains E_B, S_B and the fusion head on CE(F(0, S_B h_B)) +
    λ·CE(s_B). After training it reports, in one eval pass: its prototypes and per-class
    counts per modality (payload) and ρ_k = nearest-prototype accuracy of A / of B on its
    multimodal samples (metrics; smoothed by PROB_EPS).

    Server: modality-wise averaging as FedAvg; prototypes count-weighted over the round's clients
    (:func:`aggregate_prototypes`); the round's clients' rows and columns of D, D_A, D_B
    recomputed from their new sketches.

    Deviation from the spec, stated: the shared objective keeps λ1·Σ_m CE(self_m) on multimodal
    samples, so the per-modality classifiers the report evaluates are trained as for every
    other method; ``aux_weight = 0`` gives the paper's CE(z_F) + λ·CE(s_weak)."""

    name = "cmsfed"
    two_modalities = True
    Hparams = CMSFedHparams
    missing_slot = "zeros"
    selects_modalities = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embed_dim = self.model.branches[self.modalities[0]].classifier.in_features
        self._hashes: dict[str, tuple[Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------ server
    def init_server_state(self, num_clients: int, num_classes: int) -> ServerState:
        m, s = len(self.modalities), self.hparams.sketch_dim
        return {
            "sketch": torch.zeros((num_clients, 3, s)),
            "dist": torch.zeros((3, num_clients, num_clients)),
            "rho": torch.full((num_clients,), float("nan"), dtype=torch.float64),
            "samples": torch.zeros(num_clients, dtype=torch.float64),
            "class_counts": torch.zeros((num_clients, num_classes), dtype=torch.float64),
            "prototypes": torch.zeros((m, num_classes, self.embed_dim)),
            "known": torch.zeros((m, num_classes), dtype=torch.bool),
        }

    def plan_round(self, round_idx: int, clients: Sequence[ClientData], clients_per_round: int, seed: int,
                   server_state: ServerState) -> list[ClientTask]:
        if round_idx == 0:
            return [ClientTask(c.cid, local_epochs=1) for c in clients]
        a, b = self.modalities
        rho = server_state["rho"].numpy()
        imbalance = global_imbalance(rho, server_state["samples"].numpy())
        dist = server_state["dist"].double().numpy()
        weak, weak_dist, weak_ok = None, None, None
        if imbalance is not None and imbalance > 1:
            weak, weak_dist, weak_ok = b, dist[2], rho > self.hparams.theta
        elif imbalance is not None and imbalance < 1:
            weak, weak_dist, weak_ok = a, dist[1], rho < 1 / self.hparams.theta
        picks = facility_location_selection(dist[0], clients_per_round, planning_rng(seed, round_idx),
                                            weak_dist, weak_ok)
        return sorted((ClientTask(cid, (weak,) if weak_only else None) for cid, weak_only in picks),
                      key=lambda t: t.cid)

    def broadcast(self, server_state: ServerState) -> ServerState:
        if not bool(server_state["known"].any()):
            return {}
        return {"prototypes": server_state["prototypes"], "known": server_state["known"]}

    def server_update(self, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                      round_idx: int) -> tuple[State, ServerState]:
        new_global = self.aggregate(global_state, updates)
        state = {k: v.clone() for k, v in server_state.items()}
        cids = [u.cid for u in updates]
        for u in updates:
            state["sketch"][u.cid] = self.sketch(global_state, u.state)
            state["rho"][u.cid] = float("nan") if u.metrics.get("rho") is None else float(u.metrics["rho"])
            state["samples"][u.cid] = u.num_samples
            state["class_counts"][u.cid] = u.payload["class_counts"].double()
        state["prototypes"], state["known"] = aggregate_prototypes(
            state["prototypes"], state["known"], [u.payload["prototypes"] for u in updates],
            [u.payload["prototype_counts"] for u in updates])
        rows = torch.tensor(cids)
        for k in range(3):
            fresh = torch.cdist(state["sketch"][rows, k].double(), state["sketch"][:, k].double()).float()
            state["dist"][k][rows] = fresh
            state["dist"][k][:, rows] = fresh.T
        return new_global, state

    def server_metrics(self, server_state: ServerState) -> dict[str, Any]:
        imbalance = global_imbalance(server_state["rho"].numpy(), server_state["samples"].numpy())
        return {"global_imbalance": imbalance}

    def sketch(self, before: State, after: State) -> Tensor:
        """(3, s) count-sketches of after − before over the encoder-group parameters: both
        encoders, the first modality's, the second's (each parameter hashed to a bucket with a
        random sign, fixed by :data:`SKETCH_SEED`; E‖sketch(x) − sketch(y)‖² = ‖x − y‖²)."""
        hashes = self._sketch_hashes()
        out = torch.zeros((3, self.hparams.sketch_dim))
        for k, m in enumerate(self.modalities, start=1):
            for key, (bucket, sign) in hashes.items():
                if self.param_groups[key] == f"{m}.encoder":
                    delta = (after[key].detach().cpu().float() - before[key].detach().cpu().float()).flatten()
                    out[k].index_add_(0, bucket, delta * sign)
        out[0] = out[1] + out[2]
        return out

    def _sketch_hashes(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._hashes is None:
            generator = torch.Generator().manual_seed(SKETCH_SEED)
            self._hashes = {}
            for name, p in self.model.named_parameters():
                if self.param_groups[name].endswith(".encoder"):
                    bucket = torch.randint(0, self.hparams.sketch_dim, (p.numel(),), generator=generator, dtype=torch.int32)
                    sign = torch.randint(0, 2, (p.numel(),), generator=generator, dtype=torch.int8).float() * 2 - 1
                    self._hashes[name] = (bucket, sign)
        return self._hashes

    # ------------------------------------------------------------------ client
    def local_loss(self, model: MultimodalNet, outputs: ModelOutputs, batch: Batch, ctx: RoundContext) -> Tensor:
        loss = super().local_loss(model, outputs, batch, ctx)
        if not ctx.broadcast or not self.hparams.proto_weight:
            return loss
        a, b = self.modalities
        prototypes = {m: ctx.broadcast["prototypes"][k].to(self.device) for k, m in enumerate((a, b))}
        known = {m: ctx.broadcast["known"][k].to(self.device) for k, m in enumerate((a, b))}
        labels = batch.labels
        term = loss.new_zeros(())
        complete = outputs.valid["fused"]
        if bool(complete.any()):
            y = labels[complete]
            logits = {m: prototype_logits(outputs.features[m][complete], prototypes[m], known[m]) for m in (a, b)}
            ratio = float(dominance_ratio(logits[a].detach(), logits[b].detach(), y))
            if ratio != 1:
                term = term + self._prototype_ce(logits[b if ratio > 1 else a], y, known[b if ratio > 1 else a])
        for m in (a, b):
            single = outputs.valid[f"{m}_only"] & ~complete
            if bool(single.any()):
                y = labels[single]
                term = term + self._prototype_ce(prototype_logits(outputs.features[m][single], prototypes[m], known[m]),
                                                 y, known[m])
        return loss + self.hparams.proto_weight * term / outputs.routed_valid.sum()

    @staticmethod
    def _prototype_ce(logits: Tensor, labels: Tensor, known: Tensor) -> Tensor:
        """Summed CE over the rows whose class has a global prototype."""
        keep = known[labels]
        return F.cross_entropy(logits[keep], labels[keep], reduction="sum")

    def finish_client(self, model: MultimodalNet, pool: TrainPool, rows: np.ndarray, ctx: RoundContext) -> None:
        a, b = self.modalities
        rows = pool.rows_with_any(ctx.client.indices, self.modalities)
        features = collect_features(model, pool, rows, self.train.batch_size, self.device)
        prototypes, counts, known = [], [], {}
        for m in (a, b):
            feats, labels, _ = features[m]
            means, n = class_means(feats, labels, model.num_classes)
            prototypes.append(means.cpu())
            counts.append(n.cpu())
            known[m] = n > 0
        ctx.payload["prototypes"] = torch.stack(prototypes)
        ctx.payload["prototype_counts"] = torch.stack(counts)
        ctx.payload["class_counts"] = torch.bincount(pool.labels[torch.as_tensor(rows)],
                                                     minlength=model.num_classes).float()
        # ρ_k on the multimodal rows: the rows both feature sets hold
        both = np.intersect1d(features[a][2].cpu().numpy(), features[b][2].cpu().numpy())
        if both.size == 0:
            ctx.metrics["rho"] = None
            return
        accuracy = {}
        for m, means in zip((a, b), prototypes):
            feats, labels, at = features[m]
            keep = torch.as_tensor(np.isin(at.cpu().numpy(), both), device=feats.device)
            accuracy[m] = float(prototype_accuracy(feats[keep], labels[keep], means.to(feats.device), known[m].to(feats.device)))
        rho = (accuracy[a] + PROB_EPS) / (accuracy[b] + PROB_EPS)
        ctx.metrics["rho"] = rho if math.isfinite(rho) else None
