"""cmi's Flower ClientApp: a SuperNode trains the clients it hosts with the method's own
``client_update``.

A ``train`` message needs two things, and the ClientApp imports and builds only those: the run's
method (:func:`~pipelines.training.rounds.build_method`, as the server builds it) and the node's
training data, memory-mapped from the workspace's cache (:mod:`pipelines.engines.flower.node_data`;
the partition named in the run config, checked against the server's fingerprint) — no run
directory, no evaluation data, no second model. Both are kept in this module per process
(:func:`worker`), so a process that handles many messages (a Ray worker of the simulation
runtime) builds them once; a deployed SuperNode starts a fresh process per message, which pays
for its imports and maps the data again (a few ms once the page cache holds it).

Each client is trained by :func:`~pipelines.training.rounds.train_client` — the very call the
local engine makes — from the received global model. Per-client persistent state (a method's
``ClientUpdate.client_state``, e.g. method ``local``'s own model) lives in ``context.state``,
i.e. in the SuperNode's memory across rounds; the server sends its checkpointed copy the first
time a client trains on a SuperNode (a new run, a resumed run, a replacement SuperNode).
A diverged client is reported to the server, which stops the run as the local engine does.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from logging import INFO

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from pipelines.artifacts import Workspace
from pipelines.errors import CmiError
from pipelines.fl import ClientData, ClientUpdate, FedAvg
from pipelines.training.config import resolve_config
from pipelines.training import rounds
from pipelines.training.data import TrainingData
from pipelines.training.rounds import TrainingDiverged, build_method, client_seed, method_clients, resolve_device

from pipelines.engines.flower.node_data import load_node_data
from pipelines.engines.flower.protocol import (
    ClientOrder, NodeSettings, RunSettings, TrainOrder, decode_train, encode_divergence, encode_node,
    encode_updates, record_state, state_record,
)

app = ClientApp()


def _settings(context: Context) -> tuple[RunSettings, NodeSettings, Workspace]:
    run = RunSettings.from_run_config(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    if run.any_client:
        node = dataclasses.replace(node, any_client=True)
    return run, node, Workspace(node.workspace or run.workspace)


@dataclass
class Worker:
    """What a SuperNode trains a run's clients with: the method, the node's training data (its
    ``splits`` empty), the clients as the method sees them, and the run's seed."""

    method: FedAvg
    data: TrainingData
    clients: list[ClientData]
    seed: int


#: (workspace, partition name and fingerprint, run config) -> its Worker, in this process
_WORKERS: dict[tuple[str, str, str, str], Worker] = {}


def worker(workspace: Workspace, run: RunSettings) -> Worker:
    """The run's :class:`Worker`, built on first use in this process and kept (one per run
    config and partition version; a re-created partition of the same name gets a new one)."""
    fingerprint = workspace.resolve("partition", run.partition).fingerprint
    key = (str(workspace.root), run.partition, fingerprint, run.config)
    if key not in _WORKERS:
        config = resolve_config(json.loads(run.config))
        data = load_node_data(workspace, run.partition)
        method = build_method(config, data.specs, data.num_classes, resolve_device(config.device))
        _WORKERS.clear()   # one run at a time per process: free the previous run's data and model
        _WORKERS[key] = Worker(method, data, method_clients(method, data), config.seed)
    return _WORKERS[key]


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Tell the server which clients this node hosts (or that it takes any) and which partition it reads."""
    run, node, workspace = _settings(context)
    partition = workspace.resolve("partition", run.partition)
    return Message(encode_node(node, partition.fingerprint), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train every client of the message, in client order, with :func:`train_client`."""
    run, node, workspace = _settings(context)
    if node.threads:
        torch.set_num_threads(node.threads)
    order = decode_train(message.content)
    started = time.perf_counter()
    work = worker(workspace, run)
    ready = time.perf_counter()
    if order.partition_fingerprint != work.data.partition.fingerprint:
        raise CmiError(
            f"SuperNode {node.partition_id}: partition {run.partition} in {workspace.root} is not the one the "
            f"server trains on (fingerprint {work.data.partition.fingerprint[:12]} vs "
            f"{order.partition_fingerprint[:12]}); copy the server's partition to this machine."
        )
    updates = []
    for client in order.clients:
        try:
            updates.append(train_client(work, order, client, context.state))
        except TrainingDiverged as exc:
            return Message(encode_divergence(exc.cid, exc.what), reply_to=message)
    log(INFO, "cmi round %d: clients %s trained in %.1f s (data and method ready in %.2f s)", order.round,
        [c.cid for c in order.clients], time.perf_counter() - ready, ready - started)
    return Message(encode_updates(updates), reply_to=message)


def train_client(work: Worker, order: TrainOrder, client: ClientOrder, state: RecordDict) -> ClientUpdate:
    """One client's checked update of ``order``'s round from its global model; the client's
    persistent state comes from the message (the server's copy) or else from ``state`` (this
    node's), and its new one is kept in ``state``."""
    data = work.clients[client.cid]
    if tuple(data.modalities) != client.modalities or client_seed(work.seed, order.round, client.cid) != client.seed:
        raise CmiError(
            f"client {client.cid} differs between this SuperNode and the server (modalities "
            f"{list(data.modalities)} vs {list(client.modalities)}, or its seed); give both the same workspace "
            "and the same cmi version."
        )
    key = f"client.{client.cid}"
    kept = state.array_records.get(key)
    client_state = client.client_state
    if client_state is None and kept is not None:
        client_state = record_state(kept)
    update = rounds.train_client(work.method, order.global_state, work.data.train.pool, data, order.round,
                                 client.seed, client_state, task=client.task, broadcast=order.broadcast)
    if update.client_state is not None:
        state[key] = state_record(update.client_state)
    return update
