"""The Flower engine's round loop (CmiStrategy) and ClientApp in one process: a Grid that hands
each message straight to cmi's ClientApp (one Flower Context per simulated SuperNode, the
message content through Flower's byte-level serialisation) against the local engine, and the
failure handling: silent SuperNodes, error replies, --min-clients, a SuperNode that replaces a
lost one, SuperNodes that read another partition."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

from pipelines.engines.flower import client_app
from pipelines.engines.flower.protocol import balance, train_clients
from pipelines.engines.flower.run import FlowerOptions, run_settings
from pipelines.engines.flower.strategy import CmiStrategy
from pipelines.engines.local import run as run_local
from pipelines.errors import CmiError
from pipelines.training.progress import QuietProgress
from pipelines.training.rounds import TrainingDiverged
from pipelines.training.session import open_session, resume_session
from tests.training.helpers import partitioned_workspace, quick_config


def wire(content: RecordDict) -> RecordDict:
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    return inflate_object_from_contents(content.object_id, objects)


class InProcessGrid(Grid):
    """SuperNodes simulated in this process: node id -> node config; ``silent`` nodes answer the
    query but never a train message (as a SuperNode SIGKILLed after the run started);
    ``replacements`` maps a node id to one that comes online with the same node config when a
    train message is first pushed to the former; at ``interrupt_round`` pushing raises
    KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, run_config: dict, node_configs: dict[int, dict], *, silent: Iterable[int] = (),
                 replacements: dict[int, int] | None = None, interrupt_round: str | None = None):
        self.contexts = {n: Context(1, n, cfg, RecordDict(), run_config) for n, cfg in node_configs.items()}
        self.silent, self.replacements = set(silent), dict(replacements or {})
        self.interrupt_round = interrupt_round
        self.replies: dict[str, Message] = {}
        self.pushed: list[tuple[str, int, str, list[int]]] = []   # (message type, node, group id, clients)
        self.states_sent: list[tuple[str, int]] = []   # (group id, client) of client-state records sent

    def set_run(self, run) -> None: ...

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            if message.metadata.group_id == self.interrupt_round:
                raise KeyboardInterrupt
            message.metadata.__dict__["_message_id"] = message.object_id
            node = message.metadata.dst_node_id
            self.pushed.append((message.metadata.message_type, node, message.metadata.group_id,
                                train_clients(message.content)))
            self.states_sent += [(message.metadata.group_id, int(key.split(".")[1]))
                                 for key in message.content.array_records if key.startswith("client-state.")]
            ids.append(message.metadata.message_id)
            train = message.metadata.message_type == "train"
            if train and node in self.replacements:
                new = self.replacements.pop(node)
                old = self.contexts[node]
                self.contexts[new] = Context(1, new, old.node_config, RecordDict(), old.run_config)
            if train and node in self.silent:
                continue
            delivered = Message(metadata=message.metadata, content=wire(message.content))  # as the node receives it
            try:
                reply = client_app.app(delivered, self.contexts[node])
                reply = Message(wire(reply.content), reply_to=message)
            except Exception as exc:  # the ClientApp runtime turns an exception into an error reply
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc)), reply_to=message)
            self.replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What the ServerApp runtime sets before creating messages."""
    for field, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, field, value)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("flower"), clients=3, missing=0.3)


def nodes(count: int, **extra) -> dict[int, dict]:
    return {100 + i: {"partition-id": i, "num-partitions": count, **extra} for i in range(count)}


def flower_session(ws, name, **overrides):
    return open_session(ws, quick_config(engine="flower", **overrides), name=name)


def train_flower(session, node_configs, *, min_clients=1, any_client=False, **grid_options) -> InProcessGrid:
    """``any_client``: the run config's (set by the engine for its own nodes); off by default, so
    that the SuperNodes' node configs decide placement."""
    options = FlowerOptions(min_clients=min_clients, round_timeout=0.5, nodes_timeout=2.0)
    settings = dataclasses.replace(run_settings(session, options), any_client=any_client)
    grid = InProcessGrid(settings.to_run_config(), node_configs, **grid_options)
    CmiStrategy(session, min_clients=min_clients, round_timeout=0.5, nodes_timeout=2.0, poll=0.01).run(grid)
    return grid


def without_time(lines):
    return [{k: v for k, v in line.items() if k != "time_s"} for line in lines]


@pytest.mark.parametrize("method, supernodes", [("fedavg", 3), ("fedcmi", 2), ("local", 3), ("centralized", 2),
                                                ("cmsfed", 2), ("pmr", 3), ("ogm_ge", 2), ("aug", 2), ("mnl", 3),
                                                ("remix", 2), ("arm", 3), ("agm", 2), ("mmpareto", 3)])
def test_flower_rounds_equal_the_local_engine_exactly(ws, method, supernodes):
    # rounds past each method's warm-up / first plan: CMSFed plans from round 2, ARM decides W after round 1
    settings = dict(method=method, rounds=3 if method in ("cmsfed", "arm", "remix", "mnl", "aug") else 2,
                    clients_per_round=2, **({"arm.proj_dim": 8} if method == "arm" else {}))   # k <= d = 16
    local = open_session(ws, quick_config(**settings), name=f"local-{method}")
    run_local(local, QuietProgress())
    flower = flower_session(ws, f"flower-{method}", **settings)
    grid = train_flower(flower, nodes(supernodes))

    for key, value in local.global_state.items():
        assert torch.equal(flower.global_state[key], value), key
    assert flower.server_state.keys() == local.server_state.keys()
    for key, value in local.server_state.items():   # CMSFed's: sketches, distances, prototypes...
        torch.testing.assert_close(flower.server_state[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    assert flower.client_states.keys() == local.client_states.keys()
    for cid, state in local.client_states.items():   # method local: every client's own model
        assert all(torch.equal(flower.client_states[cid][k], v) for k, v in state.items())
    assert without_time(flower.run.read_metrics()) == without_time(local.run.read_metrics())
    assert flower.run.artifact().manifest["status"] == "complete"
    queries = [p for p in grid.pushed if p[0] == "query"]
    assert len(queries) == supernodes   # each SuperNode asked once where it belongs
    for kind, node, round_, cids in grid.pushed:
        if kind == "train":   # each client on its host, SuperNode c % N
            assert cids and all(c % supernodes == node - 100 for c in cids)
            assert set(cids) <= set(flower.plan_round(int(round_)))


@pytest.mark.parametrize("where", ["node-config", "run-config"])
def test_any_client_supernodes_share_each_round_by_size_and_change_nothing(ws, where):
    """Said by each SuperNode (node config ``any-client``) or for all by the run config (the
    engine's own loopback deployment or simulation)."""
    settings = dict(method="local", rounds=5, clients_per_round=2)   # round 5 pairs clients 0 and 2
    local = open_session(ws, quick_config(**settings), name="local-any")
    if not local.finished:
        run_local(local, QuietProgress())
    flower = flower_session(ws, f"flower-any-{where}", **settings)
    if where == "node-config":
        grid = train_flower(flower, nodes(2, **{"any-client": True}))
    else:
        grid = train_flower(flower, nodes(2), any_client=True)
    for cid, state in local.client_states.items():
        assert all(torch.equal(flower.client_states[cid][k], v) for k, v in state.items())
    assert without_time(flower.run.read_metrics()) == without_time(local.run.read_metrics())

    sizes = {c.cid: len(c.indices) for c in flower.clients}
    sent = {}
    for kind, node, round_, cids in grid.pushed:
        if kind == "train":
            sent.setdefault(int(round_), {})[node] = cids
    holder, expected_states = {}, []
    for round_ in range(1, 6):
        assert sent[round_] == balance({c: sizes[c] for c in local.plan_round(round_)}, [100, 101])
        for node, cids in sorted(sent[round_].items()):
            # a client whose model another SuperNode (or none yet) keeps gets the server's copy
            expected_states += [(str(round_), c) for c in cids if c in holder and holder[c] != node]
        holder.update({c: node for node, cids in sent[round_].items() for c in cids})
    assert grid.states_sent == expected_states
    assert expected_states   # the case arose: a client changed SuperNode between its rounds


def test_a_lost_any_client_supernode_leaves_its_clients_to_the_others(ws):
    session = flower_session(ws, "flower-any-lost", method="fedavg", rounds=2, clients_per_round=3)
    grid = train_flower(session, nodes(3, **{"any-client": True}), silent=[101], min_clients=2)
    lines = session.run.read_metrics()
    assert lines[0]["failed_clients"] != [] and lines[1]["failed_clients"] == []
    assert lines[1]["clients"] == [0, 1, 2]
    assert not [p for p in grid.pushed if p[:3] == ("train", 101, "2")]


def test_local_method_keeps_each_clients_model_in_the_supernode_context(ws):
    session = flower_session(ws, "flower-local-state", method="local", rounds=2, clients_per_round=3)
    grid = train_flower(session, nodes(3))
    for node, context in grid.contexts.items():
        cid = node - 100
        kept = client_app.record_state(context.state.array_records[f"client.{cid}"])
        assert all(torch.equal(kept[k], v) for k, v in session.client_states[cid].items())
    assert grid.states_sent == []   # the nodes held every client's model: the server never sent one


def test_a_run_resumed_on_fresh_supernodes_equals_the_uninterrupted_local_run(ws):
    settings = dict(method="local", rounds=3, clients_per_round=2)
    local = open_session(ws, quick_config(**settings), name="local-resume-ref")
    run_local(local, QuietProgress())
    flower = flower_session(ws, "flower-resumed", **settings)
    with pytest.raises(KeyboardInterrupt):
        train_flower(flower, nodes(3), interrupt_round="3")
    assert flower.run.artifact().manifest["status"] == "running" and flower.rounds_done == 2
    resumed = resume_session(ws, "flower-resumed")   # what the ServerApp of the next Flower run does
    grid = train_flower(resumed, nodes(3))            # new SuperNodes: empty contexts
    # round 3's clients get the server's checkpointed model of the clients trained before
    trained_before = {c for r in (1, 2) for c in local.plan_round(r)}
    assert grid.states_sent == [("3", c) for c in local.plan_round(3) if c in trained_before]
    assert resumed.client_states.keys() == local.client_states.keys()
    for cid, state in local.client_states.items():
        assert all(torch.equal(resumed.client_states[cid][k], v) for k, v in state.items())
    assert without_time(resumed.run.read_metrics()) == without_time(local.run.read_metrics())


def test_a_diverged_client_stops_the_run_as_diverged(ws):
    session = flower_session(ws, "flower-diverged", method="fedavg", rounds=1, clients_per_round=3,
                             **{"train.lr": 1e30})
    with pytest.raises(TrainingDiverged, match="training diverged in round 1: client"):
        train_flower(session, nodes(3))
    assert session.run.artifact().manifest["status"] == "diverged"


def test_a_silent_supernode_fails_its_clients_and_is_not_used_again(ws):
    session = flower_session(ws, "flower-silent", method="fedavg", rounds=2, clients_per_round=3)
    grid = train_flower(session, nodes(3), silent=[101], min_clients=2)
    lines = session.run.read_metrics()
    assert [(l["clients"], l["failed_clients"]) for l in lines] == [([0, 2], [1]), ([0, 2], [1])]
    assert [p[:3] for p in grid.pushed if p[0] == "train" and p[1] == 101] == [("train", 101, "1")]
    assert session.run.artifact().manifest["status"] == "complete"


def test_a_supernode_that_joins_with_the_same_partition_id_takes_over(ws):
    session = flower_session(ws, "flower-replaced", method="fedavg", rounds=2, clients_per_round=3)
    grid = train_flower(session, nodes(3), silent=[101], replacements={101: 201}, min_clients=2)
    lines = session.run.read_metrics()
    assert [(l["clients"], l["failed_clients"]) for l in lines] == [([0, 2], [1]), ([0, 1, 2], [])]
    assert ("train", 201, "2", [1]) in grid.pushed


def test_fewer_replies_than_min_clients_stop_the_run_resumably(ws):
    session = flower_session(ws, "flower-min", method="fedavg", rounds=2, clients_per_round=3)
    with pytest.raises(CmiError) as failure:
        train_flower(session, nodes(3), silent=[101], min_clients=3)
    assert "round 1: 2 client(s) replied, fewer than --min-clients 3 (client 1: no reply within 0.5 s)" in str(failure.value)
    assert "`cmi train --resume flower-min`" in str(failure.value)
    manifest = session.run.artifact().manifest
    assert manifest["status"] == "failed" and manifest["rounds_done"] == 0


def test_a_clientapp_error_fails_only_that_supernodes_clients(ws, monkeypatch):
    session = flower_session(ws, "flower-error", method="fedavg", rounds=1, clients_per_round=3)
    real = client_app.train_client

    def out_of_memory(session, order, client, state):
        if client.cid == 2:
            raise RuntimeError("CUDA out of memory")
        return real(session, order, client, state)

    monkeypatch.setattr(client_app, "train_client", out_of_memory)
    train_flower(session, nodes(3))
    line = session.run.read_metrics()[0]
    assert (line["clients"], line["failed_clients"]) == ([0, 1], [2])


@pytest.mark.parametrize("bad, message", [
    ({102: {"partition-id": 0, "num-partitions": 3}}, "both claim partition-id 0"),
    ({102: {"partition-id": 2, "num-partitions": 4}}, "disagree on num-partitions"),
])
def test_inconsistent_supernodes_are_refused(ws, bad, message):
    session = flower_session(ws, "flower-bad-nodes", method="fedavg", rounds=1, clients_per_round=3)
    with pytest.raises(CmiError, match=message):
        train_flower(session, {**nodes(3), **bad})


def test_a_supernode_reading_another_partition_is_refused(ws, tmp_path):
    other = partitioned_workspace(tmp_path, clients=3, missing=0.3, seed=1)   # same partition name, other data
    assert other.resolve("partition").name == ws.resolve("partition").name
    session = flower_session(ws, "flower-other-data", method="fedavg", rounds=1, clients_per_round=3)
    configs = nodes(3)
    configs[102]["workspace"] = str(other.root)
    with pytest.raises(CmiError, match="reads another partition than the server"):
        train_flower(session, configs)


def test_missing_supernodes_time_out_with_the_node_config_to_use(ws):
    session = flower_session(ws, "flower-missing", method="fedavg", rounds=1, clients_per_round=3)
    with pytest.raises(CmiError, match=r"no SuperNode serves partition-id\(s\) \[2\].*num-partitions=3"):
        train_flower(session, {k: v for k, v in nodes(3).items() if k != 102})
