"""The Flower strategy of a cmi run: the rounds of a :class:`TrainingSession` over SuperNodes.

Per round the strategy asks the session which clients train (the local engine's seeded
selection), sends each SuperNode hosting some of them one ``train`` message (the global model,
each client's seed and modalities, and a client's persistent state when that SuperNode does not
hold it yet; see :mod:`pipelines.engines.flower.protocol`), waits for the replies at most
``round_timeout`` seconds, and hands the updates to
``session.finish_round``, which aggregates them with the method's own ``aggregate``
(group-wise: a group is averaged over the clients that trained it), evaluates, and writes
metrics, predictions and the checkpoint exactly as the local engine does. Evaluation is central
(on the ServerApp), so there is no federated evaluation step.

Placement: a client trains on the SuperNode hosting it, or, when every SuperNode takes any
client (``any-client``, the loopback deployments), the round's clients are balanced over the
SuperNodes by sample count (:func:`~pipelines.engines.flower.protocol.balance`).

Failures: a client whose SuperNode does not reply in time or replies with an error is a failed
client of the round (listed in the metrics line's ``failed_clients``); its SuperNode is not used
again, and a SuperNode that joins later with the same ``partition-id`` takes its place (with
``any-client`` SuperNodes, the others take over its clients from the next round). A round
with fewer than ``min_clients`` updates stops the run (status ``failed``, resumable); a client
whose training diverged stops it as in the local engine (status ``diverged``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from pipelines.errors import CmiError
from pipelines.training.rounds import TrainingDiverged, check_update
from pipelines.training.session import TrainingSession

from pipelines.engines.flower.protocol import (
    ClientOrder, NodeInfo, balance, decode_divergence, decode_node, decode_updates, encode_train, host_of,
    state_record, train_clients,
)


def check_min_clients(session: TrainingSession, min_clients: int) -> None:
    planned = 1 if session.method_cls.pooled else session.config.clients_per_round
    if not 1 <= min_clients <= planned:
        raise CmiError(f"--min-clients must be between 1 and the clients per round ({planned}), got {min_clients}.")


class CmiStrategy(Strategy):
    """Runs ``session``'s remaining rounds on the SuperNodes of a Flower grid (module docstring)."""

    def __init__(self, session: TrainingSession, *, min_clients: int = 1, round_timeout: float = 3600.0,
                 nodes_timeout: float = 120.0, poll: float = 0.2):
        check_min_clients(session, min_clients)
        self.session = session
        self.min_clients, self.round_timeout, self.nodes_timeout, self.poll = (
            min_clients, round_timeout, nodes_timeout, poll)
        self.nodes: dict[int, NodeInfo] = {}        # partition id -> the SuperNode serving it
        self.lost: set[int] = set()                 # node ids that failed once; never used again
        self.holder: dict[int, int] = {}            # client id -> the node keeping its latest persistent state
        self.num_partitions: int | None = None
        self._sent: dict[str, tuple[int, list[int]]] = {}   # message id -> (node id, client ids)
        self._failures: dict[int, str] = {}         # client id -> why it failed, this round
        self._started = 0.0

    # ------------------------------------------------------------------ the round loop

    def run(self, grid: Grid) -> None:
        """Find the SuperNodes, then train the session's remaining rounds (marks the run's status)."""
        self.summary()
        with self.session.guard():
            self.discover(grid, wait=True)
            for round_ in range(self.session.next_round, self.session.config.rounds + 1):
                self._started = time.perf_counter()
                self.discover(grid, wait=False)
                messages = self.configure_train(round_, state_record(self.session.global_state), ConfigRecord(), grid)
                self.aggregate_train(round_, self.exchange(grid, messages))

    def exchange(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """Push ``messages``, then pull replies every ``poll`` s until all came or
        ``round_timeout`` passed (Grid.send_and_receive polls only every 3 s)."""
        self._sent = {}
        for message_id, message in zip(grid.push_messages(messages), messages):
            target = (message.metadata.dst_node_id, train_clients(message.content))
            if message_id:
                self._sent[message_id] = target
            else:
                self._fail(*target, "the SuperLink refused the message")
        return list(self._collect(grid, set(self._sent), self.round_timeout).values())

    def _collect(self, grid: Grid, message_ids: set[str], timeout: float) -> dict[str, Message]:
        replies: dict[str, Message] = {}
        deadline = time.monotonic() + timeout
        while message_ids - set(replies):
            for reply in grid.pull_messages(list(message_ids - set(replies))):
                replies[reply.metadata.reply_to_message_id] = reply
            if not message_ids - set(replies) or time.monotonic() >= deadline:
                break
            time.sleep(self.poll)
        return replies

    # ------------------------------------------------------------------ Strategy API

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        """One ``train`` message per SuperNode hosting clients of the session's plan for the round;
        planned clients whose partition no SuperNode serves fail at once."""
        session = self.session
        self._failures = {}
        messages = []
        broadcast = session.broadcast()
        broadcast_record = state_record(broadcast) if broadcast else None
        for node_id, cids in self.assign(session.plan_round(server_round)).items():
            orders = [ClientOrder(cid, session.client_seed(server_round, cid), tuple(session.clients[cid].modalities),
                                  None if self.holder.get(cid) == node_id else session.client_states.get(cid),
                                  session.task(server_round, cid))
                      for cid in cids]
            content = encode_train(server_round, session.data.partition.fingerprint, arrays, orders, broadcast_record)
            messages.append(Message(content, node_id, MessageType.TRAIN, ttl=self.round_timeout,
                                    group_id=str(server_round)))
        return messages

    def assign(self, clients: list[int]) -> dict[int, list[int]]:
        """Node id -> the clients it trains this round: each client's host, or, when every
        SuperNode takes any client, a split balanced by sample count. Clients no SuperNode can
        take fail at once."""
        nodes = [self.nodes[p] for p in sorted(self.nodes)]
        if nodes and all(info.any_client for info in nodes):
            loads = {cid: len(self.session.clients[cid].indices) for cid in clients}
            return balance(loads, [info.node_id for info in nodes])
        assigned: dict[int, list[int]] = {}
        for cid in clients:
            host = host_of(cid, self.num_partitions)
            if host in self.nodes:
                assigned.setdefault(self.nodes[host].node_id, []).append(cid)
            else:
                self._failures[cid] = f"no SuperNode serves partition-id {host}"
        return assigned

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """Decode the replies into ClientUpdates and finish the round through the session (the
        method's ``aggregate``, evaluation, metrics, checkpoint)."""
        updates = []
        replies = {r.metadata.reply_to_message_id: r for r in replies}
        for message_id, (node_id, cids) in self._sent.items():
            reply = replies.get(message_id)
            if reply is None:
                self._fail(node_id, cids, f"no reply within {self.round_timeout:g} s")
            elif reply.has_error():
                lost = reply.error.code != ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                self._fail(node_id, cids, f"error {reply.error.code}: {reply.error.reason}", lost=lost)
            elif (diverged := decode_divergence(reply.content)) is not None:
                raise TrainingDiverged(server_round, *diverged)
            else:
                got = decode_updates(reply.content, self.session.global_state)
                for update in got:   # the ClientApp checked them too; this guards what crossed the network
                    check_update(server_round, update)
                updates += got
                self.holder.update((u.cid, node_id) for u in got)
                missing = sorted(set(cids) - {u.cid for u in got})
                if missing:
                    self._fail(node_id, missing, "the reply holds no update for them", lost=False)
        failed = sorted(self._failures)
        if len(updates) < self.min_clients:
            reasons = "; ".join(f"client {c}: {self._failures[c]}" for c in failed)
            raise CmiError(
                f"round {server_round}: {len(updates)} client(s) replied, fewer than --min-clients {self.min_clients} "
                f"({reasons}). Check the SuperNodes, then continue with `cmi train --resume {self.session.run.name}`."
            )
        updates.sort(key=lambda u: u.cid)
        replied = time.perf_counter()
        self.session.finish_round(server_round, updates, self._started, failed)
        done = time.perf_counter()
        log(INFO, "round %d: %d client update(s), failed clients %s, %.1f s (replies after %.1f s, aggregation, "
            "evaluation and checkpoint %.1f s)", server_round, len(updates), failed, done - self._started,
            replied - self._started, done - replied)
        return state_record(self.session.global_state), MetricRecord(
            {"clients": len(updates), "failed-clients": len(failed)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> list[Message]:
        """None: the session evaluates the global model centrally in ``finish_round``."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        config = self.session.config
        log(INFO, "cmi %s: rounds %d..%d, %d client(s) per round, min clients %d, round timeout %g s",
            config.method, self.session.next_round, config.rounds, config.clients_per_round, self.min_clients,
            self.round_timeout)

    # ------------------------------------------------------------------ failures

    def _fail(self, node_id: int, cids: list[int], reason: str, lost: bool = True) -> None:
        log(WARNING, "SuperNode %d: clients %s failed: %s", node_id, cids, reason)
        self._failures.update({cid: reason for cid in cids})
        if lost:
            self.lost.add(node_id)
            self.nodes = {p: info for p, info in self.nodes.items() if info.node_id != node_id}

    # ------------------------------------------------------------------ SuperNodes

    def _needed_partitions(self) -> set[int]:
        if self.num_partitions is None:
            return {0}
        return {host_of(cid, self.num_partitions) for cid in range(len(self.session.clients))}

    def missing_partitions(self) -> set[int]:
        return self._needed_partitions() - set(self.nodes)

    def discover(self, grid: Grid, *, wait: bool) -> None:
        """Forget SuperNodes that went offline; when partitions are unserved, ask new SuperNodes
        which partition they serve. With ``wait``, repeat until every partition that hosts a
        client is served, at most ``nodes_timeout`` s."""
        deadline = time.monotonic() + self.nodes_timeout
        while True:
            online = set(grid.get_node_ids()) - self.lost
            self.nodes = {p: info for p, info in self.nodes.items() if info.node_id in online}
            new = online - {info.node_id for info in self.nodes.values()}
            if new and self.missing_partitions():
                for info in self._query(grid, new, max(deadline - time.monotonic(), 1.0)):
                    self._place(info)
            missing = self.missing_partitions()
            if not missing or not wait:
                return
            if time.monotonic() >= deadline:
                raise CmiError(
                    f"no SuperNode serves partition-id(s) {sorted(missing)} after {self.nodes_timeout:g} s "
                    f"({len(self.nodes)} SuperNode(s) placed); start them with --node-config "
                    f"'partition-id=I num-partitions={self.num_partitions or 'N'}' or raise --nodes-timeout."
                )
            time.sleep(0.5)

    def _query(self, grid: Grid, node_ids: set[int], timeout: float) -> list[NodeInfo]:
        nodes = sorted(node_ids)
        messages = [Message(RecordDict(), node, MessageType.QUERY, ttl=timeout) for node in nodes]
        sent = {mid: node for mid, node in zip(grid.push_messages(messages), nodes) if mid}
        replies = self._collect(grid, set(sent), timeout)
        infos = []
        for message_id, node_id in sent.items():
            reply = replies.get(message_id)
            if reply is not None and not reply.has_error():
                infos.append(decode_node(node_id, reply.content))
                continue
            if reply is not None and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION:
                raise CmiError(f"SuperNode {node_id} cannot serve this run: {reply.error.reason}")
            log(WARNING, "SuperNode %d did not answer the query (%s); not used",
                node_id, reply.error.reason if reply is not None else f"no reply within {timeout:.0f} s")
            self.lost.add(node_id)
        return infos

    def _place(self, info: NodeInfo) -> None:
        expected = self.session.data.partition.fingerprint
        if info.partition_fingerprint != expected:
            raise CmiError(
                f"SuperNode {info.node_id} (partition-id {info.partition_id}) reads another partition than the "
                f"server ({info.partition_fingerprint[:12]} vs {expected[:12]}); give every machine the same "
                "workspace partition (copy it, or point its --node-config workspace=... at it)."
            )
        if self.num_partitions is None:
            self.num_partitions = info.num_partitions
        elif info.num_partitions != self.num_partitions:
            raise CmiError(f"SuperNodes disagree on num-partitions ({info.num_partitions} vs {self.num_partitions}); "
                           "start every SuperNode with the same num-partitions.")
        if info.partition_id in self.nodes:
            raise CmiError(f"SuperNodes {self.nodes[info.partition_id].node_id} and {info.node_id} both claim "
                           f"partition-id {info.partition_id}; give each SuperNode its own partition-id.")
        self.nodes[info.partition_id] = info
        log(INFO, "SuperNode %d serves partition-id %d of %d", info.node_id, info.partition_id, info.num_partitions)
