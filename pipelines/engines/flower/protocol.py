"""The wire format between cmi's ServerApp and ClientApp, in one place.

Placement: SuperNode ``partition-id = p`` of ``num-partitions = P`` hosts the clients ``cid`` with
``cid % P == p`` (:func:`hosted_clients`); P = number of clients gives one client per node. When
every SuperNode says ``any-client = true`` (it reads the whole partition, as the SuperNodes of a
loopback deployment do), the server instead spreads each round's clients over them by sample
count (:func:`balance`); results do not depend on which SuperNode trains a client.

Messages (one per SuperNode and round; the node trains its selected clients one after the other):

* ``query`` (start of a run, and for SuperNodes that join later): the reply's ``node``
  ConfigRecord holds ``partition-id``, ``num-partitions``, ``any-client`` and
  ``partition-fingerprint`` (of the partition the node loads), so the server knows where each
  client lives and that the node reads the same data.
* ``train``: ``global`` ArrayRecord (the global model), ``broadcast`` ArrayRecord (what the
  method's server sends every client, ``FedAvg.broadcast``; absent when empty), ``round``
  ConfigRecord (``round``, ``partition-fingerprint``), and per selected client ``client.<cid>``
  ConfigRecord (``cid``, ``seed``, ``modalities`` it holds, and its task of the round plan:
  ``train-modalities`` as JSON, null for all, and ``local-epochs``, 0 for the run's) plus ``client-state.<cid>`` ArrayRecord when the server sends
  the client's persistent state (``ClientUpdate.client_state``, e.g. method ``local``'s own
  model): only the first time the client trains on that SuperNode in this run, which keeps it in
  its ``context.state`` afterwards.
  The reply holds per client ``result.<cid>`` ConfigRecord (``num-samples``, ``trained-groups``,
  ``metrics`` as JSON), ``update.<cid>`` ArrayRecord (its state; absent when it trained
  nothing, the update then being the global state it received), ``payload.<cid>`` ArrayRecord
  (``ClientUpdate.payload``, when not empty) and ``client-state.<cid>``
  ArrayRecord (its new persistent state, if any: the server checkpoints and evaluates it; arrays
  equal to the state's travel once, Flower's objects being content-addressed) — or, when a
  client's training diverged, only a ``diverged`` ConfigRecord (``cid``, ``what``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import safetensors.torch
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from pipelines.artifacts import canonical_json
from pipelines.errors import CmiError
from pipelines.fl import ClientTask, ClientUpdate

State = dict[str, torch.Tensor]

QUERY_NODE = "node"
GLOBAL = "global"
BROADCAST = "broadcast"
ROUND = "round"
DIVERGED = "diverged"
STATE_ARRAY = "safetensors"

#: the Flower engine's folder inside a run directory (deployment home, logs) and the file where
#: the ServerApp leaves the message of the error that stopped it
FLOWER_DIR = "flower"
SERVER_ERROR = "serverapp-error.txt"


@dataclass(frozen=True)
class RunSettings:
    """The Flower run config of a cmi run: the keys of ``[tool.flwr.app.config]`` in
    ``app/pyproject.toml`` (``round_timeout`` is written ``round-timeout``).

    ``workspace``: absolute path of the cmi workspace (a SuperNode may override it with its node
    config ``workspace``); ``run``: the run directory's name, created before the Flower run by
    `cmi train --engine flower`; ``partition``: the partition name the ClientApps load;
    ``config``: the run's resolved config (``config.json``) as JSON; ``round_timeout``: seconds a
    round waits for its replies; ``min_clients``: fewest clients that must reply for a round to
    count; ``nodes_timeout``: seconds to wait for every SuperNode at the start; ``any_client``:
    every SuperNode may train any client (the engine's own loopback deployment or simulation,
    whose nodes share this machine's workspace), as if each said ``any-client`` itself."""

    workspace: str
    run: str
    partition: str
    config: str
    round_timeout: float = 3600.0
    min_clients: int = 1
    nodes_timeout: float = 120.0
    any_client: bool = False

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "RunSettings":
        settings = cls(**{f.name: run_config[f.name.replace("_", "-")] for f in dataclasses.fields(cls)})
        if not settings.workspace or not settings.run:
            raise CmiError("this Flower run has no cmi workspace/run in its run config; launch it with "
                           "`cmi train --engine flower` (it creates the run directory and passes both).")
        return settings


@dataclass(frozen=True)
class NodeSettings:
    """A SuperNode's node config: ``partition-id`` and ``num-partitions`` (which clients it hosts,
    :func:`hosted_clients`), optionally ``any-client`` (true: it may train any client, see the
    module docstring), ``workspace`` (where this machine keeps the cmi workspace, if not at the
    run config's path) and ``threads`` (torch threads of its ClientApps)."""

    partition_id: int
    num_partitions: int
    workspace: str | None = None
    threads: int | None = None
    any_client: bool = False

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> "NodeSettings":
        try:
            partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
        except (KeyError, TypeError, ValueError):
            raise CmiError("this SuperNode has no valid partition-id / num-partitions; start it with "
                           "--node-config 'partition-id=I num-partitions=N'.") from None
        if not 0 <= partition_id < num_partitions:
            raise CmiError(f"SuperNode partition-id {partition_id} is outside 0..{num_partitions - 1}; "
                           "fix its --node-config.")
        threads = node_config.get("threads")
        return cls(partition_id, num_partitions, node_config.get("workspace") or None,
                   int(threads) if threads else None, bool(node_config.get("any-client", False)))


def hosted_clients(partition_id: int, num_partitions: int, num_clients: int) -> list[int]:
    """The client ids SuperNode ``partition_id`` of ``num_partitions`` hosts."""
    return list(range(partition_id, num_clients, num_partitions))


def host_of(cid: int, num_partitions: int) -> int:
    """The partition id of the SuperNode hosting client ``cid``."""
    return cid % num_partitions


def balance(loads: dict[int, int], bins: Sequence[int]) -> dict[int, list[int]]:
    """Spread items (id -> load) over ``bins`` (ids, in priority order): largest load first, each
    to the bin with the least load so far (the earlier bin on ties). Returns bin -> item ids,
    ascending; deterministic."""
    assigned: dict[int, list[int]] = {b: [] for b in bins}
    totals = {b: 0 for b in bins}
    for item in sorted(loads, key=lambda i: (-loads[i], i)):
        target = min(bins, key=totals.__getitem__)   # the first of the least loaded
        assigned[target].append(item)
        totals[target] += loads[item]
    return {b: sorted(items) for b, items in assigned.items() if items}


def state_record(state: State) -> ArrayRecord:
    """A state dict as an ArrayRecord holding one Array: the tensors' safetensors serialisation
    (bit-exact, no pickle). One object per model rather than one per tensor, because Flower
    moves every object with HTTP requests of its own: with ~60 tensors per model, per-tensor
    Arrays made a SuperNode's reply of 4 client states take 7 s on loopback."""
    blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    return ArrayRecord({STATE_ARRAY: Array(np.frombuffer(blob, dtype=np.uint8))})


def record_state(record: ArrayRecord) -> State:
    return safetensors.torch.load(record[STATE_ARRAY].numpy().tobytes())


@dataclass
class ClientOrder:
    """What the server asks of one client in a round."""

    cid: int
    seed: int
    modalities: tuple[str, ...]
    client_state: State | None = None   # the server's copy of the client's persistent state
    task: ClientTask | None = None      # its part of the round plan (None: every modality, the run's epochs)


@dataclass
class TrainOrder:
    """A decoded ``train`` message."""

    round: int
    partition_fingerprint: str
    global_state: State
    clients: list[ClientOrder]
    broadcast: State = dataclasses.field(default_factory=dict)


def encode_train(round_: int, partition_fingerprint: str, global_record: ArrayRecord,
                 clients: Sequence[ClientOrder], broadcast: ArrayRecord | None = None) -> RecordDict:
    content = RecordDict({
        GLOBAL: global_record,
        ROUND: ConfigRecord({"round": round_, "partition-fingerprint": partition_fingerprint}),
    })
    if broadcast is not None:
        content[BROADCAST] = broadcast
    for order in clients:
        task = order.task or ClientTask(order.cid)
        content[f"client.{order.cid}"] = ConfigRecord({
            "cid": order.cid, "seed": order.seed, "modalities": list(order.modalities),
            "train-modalities": json.dumps(None if task.modalities is None else list(task.modalities)),
            "local-epochs": int(task.local_epochs or 0),
        })
        if order.client_state is not None:
            content[f"client-state.{order.cid}"] = state_record(order.client_state)
    return content


def _client_records(content: RecordDict) -> list[ConfigRecord]:
    records = [r for key, r in content.config_records.items() if key.startswith("client.")]
    return sorted(records, key=lambda r: int(r["cid"]))


def train_clients(content: RecordDict) -> list[int]:
    """The client ids a ``train`` message asks for, ascending."""
    return [int(r["cid"]) for r in _client_records(content)]


def decode_train(content: RecordDict) -> TrainOrder:
    round_info = content.config_records[ROUND]
    clients = []
    for record in _client_records(content):
        cid = int(record["cid"])
        kept = content.array_records.get(f"client-state.{cid}")
        trains = json.loads(str(record["train-modalities"]))
        task = ClientTask(cid, None if trains is None else tuple(trains), int(record["local-epochs"]) or None)
        clients.append(ClientOrder(cid, int(record["seed"]), tuple(record["modalities"]),
                                   record_state(kept) if kept is not None else None, task))
    broadcast = content.array_records.get(BROADCAST)
    return TrainOrder(int(round_info["round"]), str(round_info["partition-fingerprint"]),
                      record_state(content.array_records[GLOBAL]), clients,
                      record_state(broadcast) if broadcast is not None else {})


def encode_updates(updates: Sequence[ClientUpdate]) -> RecordDict:
    content = RecordDict()
    for update in updates:
        content[f"result.{update.cid}"] = ConfigRecord({
            "num-samples": int(update.num_samples),
            "trained-groups": sorted(update.trained_groups),
            "metrics": canonical_json(update.metrics),
        })
        if update.num_samples > 0:
            content[f"update.{update.cid}"] = state_record(update.state)
        if update.payload:
            content[f"payload.{update.cid}"] = state_record(update.payload)
        if update.client_state is not None:
            content[f"client-state.{update.cid}"] = state_record(update.client_state)
    return content


def decode_updates(content: RecordDict, global_state: State) -> list[ClientUpdate]:
    """The ClientUpdates of a ``train`` reply, ascending by client id; a client that trained
    nothing gets ``global_state`` as its state (as ``FedAvg.client_update`` returns it)."""
    updates = []
    for key, record in content.config_records.items():
        if not key.startswith("result."):
            continue
        cid = int(key.split(".", 1)[1])
        num_samples = int(record["num-samples"])
        state = record_state(content.array_records[f"update.{cid}"]) if num_samples > 0 else global_state
        kept = content.array_records.get(f"client-state.{cid}")
        payload = content.array_records.get(f"payload.{cid}")
        updates.append(ClientUpdate(cid=cid, num_samples=num_samples, state=state,
                                    trained_groups=set(record["trained-groups"]),
                                    metrics=json.loads(str(record["metrics"])),
                                    client_state=record_state(kept) if kept is not None else None,
                                    payload=record_state(payload) if payload is not None else {}))
    updates.sort(key=lambda u: u.cid)
    return updates


def encode_divergence(cid: int, what: str) -> RecordDict:
    return RecordDict({DIVERGED: ConfigRecord({"cid": cid, "what": what})})


def decode_divergence(content: RecordDict) -> tuple[int, str] | None:
    """(client id, what went wrong) of a reply reporting a diverged client, else None."""
    record = content.config_records.get(DIVERGED)
    return (int(record["cid"]), str(record["what"])) if record is not None else None


def encode_node(node: NodeSettings, partition_fingerprint: str) -> RecordDict:
    return RecordDict({QUERY_NODE: ConfigRecord({
        "partition-id": node.partition_id, "num-partitions": node.num_partitions, "any-client": node.any_client,
        "partition-fingerprint": partition_fingerprint,
    })})


@dataclass(frozen=True)
class NodeInfo:
    """A SuperNode's answer to the ``query`` message."""

    node_id: int
    partition_id: int
    num_partitions: int
    partition_fingerprint: str
    any_client: bool = False


def decode_node(node_id: int, content: RecordDict) -> NodeInfo:
    record = content.config_records[QUERY_NODE]
    return NodeInfo(node_id, int(record["partition-id"]), int(record["num-partitions"]),
                    str(record["partition-fingerprint"]), bool(record["any-client"]))
