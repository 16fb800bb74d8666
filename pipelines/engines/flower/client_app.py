"""cmi's Flower ClientApp: a SuperNode trains the clients it hosts with the method's own
``client_update``.

A SuperNode runs every message in a fresh process, so each ``train`` message maps the node's
training data from its workspace (the partition named in the run config, checked against the
server's fingerprint; :mod:`pipelines.engines.flower.node_data`) and builds a
:class:`~pipelines.training.session.TrainingSession` exactly as the server did; each client is then trained by ``session.client_update`` — the very call the local
engine makes — from the received global model. Per-client persistent state (a method's
``ClientUpdate.client_state``, e.g. method ``local``'s own model) lives in ``context.state``,
i.e. in the SuperNode's memory across rounds; the server sends its checkpointed copy the first
time a client trains on a SuperNode (a new run, a resumed run, a replacement SuperNode).
A diverged client is reported to the server, which stops the run as the local engine does.
"""

from __future__ import annotations

import dataclasses
import json
import time
from logging import INFO

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from pipelines.artifacts import Workspace
from pipelines.errors import CmiError
from pipelines.fl import ClientUpdate
from pipelines.training.config import resolve_config
from pipelines.training.rounds import TrainingDiverged
from pipelines.training.run_dir import RunDirectory
from pipelines.training.session import TrainingSession, resolve_device

from pipelines.engines.flower.node_data import load_node_data
from pipelines.engines.flower.protocol import (
    ClientOrder, NodeSettings, RunSettings, decode_train, encode_divergence, encode_node, encode_updates,
    record_state, state_record,
)

app = ClientApp()


def _settings(context: Context) -> tuple[RunSettings, NodeSettings, Workspace]:
    run = RunSettings.from_run_config(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    if run.any_client:
        node = dataclasses.replace(node, any_client=True)
    return run, node, Workspace(node.workspace or run.workspace)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Tell the server which clients this node hosts (or that it takes any) and which partition it reads."""
    run, node, workspace = _settings(context)
    partition = workspace.resolve("partition", run.partition)
    return Message(encode_node(node, partition.fingerprint), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run ``session.client_update`` for every client of the message, in client order."""
    run, node, workspace = _settings(context)
    if node.threads:
        torch.set_num_threads(node.threads)
    order = decode_train(message.content)
    started = time.perf_counter()
    session = client_session(workspace, run)
    ready = time.perf_counter()
    if order.partition_fingerprint != session.data.partition.fingerprint:
        raise CmiError(
            f"SuperNode {node.partition_id}: partition {run.partition} in {workspace.root} is not the one the "
            f"server trains on (fingerprint {session.data.partition.fingerprint[:12]} vs "
            f"{order.partition_fingerprint[:12]}); copy the server's partition to this machine."
        )
    session.global_state = order.global_state
    updates = []
    for client in order.clients:
        try:
            updates.append(train_client(session, order.round, client, context.state))
        except TrainingDiverged as exc:
            return Message(encode_divergence(exc.cid, exc.what), reply_to=message)
    log(INFO, "cmi round %d: clients %s trained in %.1f s (data and method ready in %.1f s)", order.round,
        [c.cid for c in order.clients], time.perf_counter() - ready, ready - started)
    return Message(encode_updates(updates), reply_to=message)


def client_session(workspace: Workspace, run: RunSettings) -> TrainingSession:
    """The run's method, clients and train pool, built from the workspace as the server built them."""
    config = resolve_config(json.loads(run.config))
    data = load_node_data(workspace, run.partition)
    return TrainingSession(RunDirectory(run.run), config, data, resolve_device(config.device))


def train_client(session: TrainingSession, round_: int, client: ClientOrder, state: RecordDict) -> ClientUpdate:
    """One client's update by ``session.client_update``; its persistent state comes from the
    message (the server's copy) or else from ``state`` (this node's), and is kept in ``state``."""
    data = session.clients[client.cid]
    if tuple(data.modalities) != client.modalities or session.client_seed(round_, client.cid) != client.seed:
        raise CmiError(
            f"client {client.cid} differs between this SuperNode and the server (modalities "
            f"{list(data.modalities)} vs {list(client.modalities)}, or its seed); give both the same workspace "
            "and the same cmi version."
        )
    key = f"client.{client.cid}"
    kept = state.array_records.get(key)
    if client.client_state is not None:
        session.client_states[client.cid] = client.client_state
    elif kept is not None:
        session.client_states[client.cid] = record_state(kept)
    update = session.client_update(round_, client.cid)
    if update.client_state is not None:
        state[key] = state_record(update.client_state)
    return update
