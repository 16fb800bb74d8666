"""The engine-independent pieces of a federated round: who trains, with which seed, whether an
update is sound, and the round's summary numbers. The local engine and the Flower engine both use
them, so a run replays identically whichever engine drives it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from pipelines.errors import CmiError
from pipelines.fl import ClientData, ClientTask, ClientUpdate, FedAvg, ServerState, TrainPool, get_method
from pipelines.fl.base import sample_clients  # noqa: F401  (re-exported: the sampling is read from here)
from pipelines.shards import ModalitySpec

if TYPE_CHECKING:
    from pipelines.training.config import RunConfig
    from pipelines.training.data import TrainingData

#: client id of the single pooled client of a ``pooled`` (centralized) method
POOLED_CLIENT = 0

# spawn-key streams of the run seed, so client sampling, client seeds and initial weights never
# share draws (streams 0, 3 and 4: client sampling, round planning and hook generators, in fl/base.py)
_CLIENT_STREAM = 1
_INIT_STREAM = 2


def client_seed(seed: int, round_: int, cid: int) -> int:
    """The seed of client ``cid``'s local update in round ``round_`` (shuffling and any other
    randomness of the update derive from it)."""
    return int(np.random.SeedSequence(seed, spawn_key=(_CLIENT_STREAM, round_, cid)).generate_state(1)[0])


def init_seed(seed: int) -> int:
    """The seed of the initial global model's weights."""
    return int(np.random.SeedSequence(seed, spawn_key=(_INIT_STREAM,)).generate_state(1)[0])


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when a GPU is visible, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CmiError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto.")
    return torch.device(requested)


def build_method(config: RunConfig, specs: Sequence[ModalitySpec], num_classes: int,
                 device: torch.device) -> FedAvg:
    """The run's method (``config.method``) training on ``device``, its model built from the
    dataset's modality ``specs`` that the method selects, ``config.model``, ``config.train`` and
    ``config.hparams``: what the local engine, the Flower ServerApp and every ClientApp train with."""
    cls = get_method(config.method)
    model_specs = cls.select_specs(list(specs), config.hparams)
    method = cls(lambda: cls.network(model_specs, num_classes, config.model, config.hparams), config.train,
                 config.hparams, device)
    method.total_rounds = config.rounds
    return method


def method_clients(method: FedAvg, data: TrainingData) -> list[ClientData]:
    """The clients ``method`` trains on ``data``: the partition's clients, or for a ``pooled``
    method the one client :data:`POOLED_CLIENT` holding every training row."""
    if method.pooled:
        return [ClientData(POOLED_CLIENT, np.arange(len(data.train)), data.modalities)]
    return data.clients


class TrainingDiverged(CmiError):
    """A client update produced a non-finite loss or weights."""

    def __init__(self, round_: int, cid: int, what: str, kept: str = ""):
        self.round, self.cid, self.what = round_, cid, what
        super().__init__(
            f"training diverged in round {round_}: client {cid} {what}.{kept} Lower the learning rate "
            "(--lr) or check the data, then start the run again with --force."
        )


def check_update(round_: int, update: ClientUpdate) -> None:
    """Raise :class:`TrainingDiverged` naming the round and client when ``update`` holds a
    non-finite loss or weight."""
    if update.num_samples == 0:
        return
    loss = update.metrics.get("loss")
    if loss is None or not math.isfinite(float(loss)):
        raise TrainingDiverged(round_, update.cid, f"has a non-finite local loss ({loss})")
    # one flag per tensor and a single host sync at the end; no copy of the weights
    finite = [torch.isfinite(t).all() for t in update.state.values() if t.is_floating_point()]
    if finite and not bool(torch.stack(finite).all()):
        raise TrainingDiverged(round_, update.cid, "has non-finite weights after local training")


def train_client(method: FedAvg, global_state: dict[str, torch.Tensor], pool: TrainPool, client: ClientData,
                 round_: int, seed: int, client_state: dict[str, torch.Tensor] | None = None, *,
                 task: ClientTask | None = None, broadcast: ServerState | None = None) -> ClientUpdate:
    """One client's local update of round ``round_`` (counted from 1, as in metrics and
    checkpoints; methods count from 0), checked with :func:`check_update`. ``seed`` comes from
    :func:`client_seed`; ``client_state`` is what the client kept from its last update (method
    ``local``), else None; ``task`` is its part of the round plan and ``broadcast`` what the
    server sends every client (``method.broadcast``)."""
    update = method.client_update(global_state, pool, client, round_ - 1, seed, client_state=client_state,
                                  task=task, broadcast=broadcast)
    check_update(round_, update)
    return update


def mean_loss(updates: Sequence[ClientUpdate]) -> float | None:
    """Sample-weighted mean of the updates' local losses."""
    weights = np.array([u.num_samples for u in updates], dtype=np.float64)
    if not len(updates) or weights.sum() == 0:
        return None
    return float(np.dot(weights, [float(u.metrics["loss"]) for u in updates]) / weights.sum())


def mean_temperatures(updates: Sequence[ClientUpdate]) -> list[float] | None:
    """Sample-weighted mean of FedCMI's class temperatures over the updates that report them
    (the round's multimodal clients); None when no update does."""
    reporting = [u for u in updates if u.metrics.get("temperatures") is not None and u.num_samples > 0]
    if not reporting:
        return None
    weights = np.array([u.num_samples for u in reporting], dtype=np.float64)
    temps = np.array([np.asarray(u.metrics["temperatures"], dtype=np.float64) for u in reporting])
    return (weights @ temps / weights.sum()).tolist()
