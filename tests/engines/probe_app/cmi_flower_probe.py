"""Probe app: each round every SuperNode returns the received vector plus (partition-id + 1) and
counts its rounds in ``context.state``; the ServerApp averages the vectors and writes what it
saw to the JSON file named by the run config's ``out``."""

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(message: Message, context: Context) -> Message:
    seen = context.state.metric_records.get("seen")
    count = (int(seen["rounds"]) if seen is not None else 0) + 1
    context.state["seen"] = MetricRecord({"rounds": count})
    partition_id = int(context.node_config["partition-id"])
    vector = message.content["arrays"]["w"].numpy() + (partition_id + 1)
    return Message(RecordDict({
        "arrays": ArrayRecord({"w": Array(vector)}),
        "metrics": MetricRecord({"partition-id": partition_id, "rounds": count}),
    }), reply_to=message)


@server.main()
def main(grid: Grid, context: Context) -> None:
    w = np.zeros(3, dtype=np.float64)
    counts = {}
    for round_ in range(1, int(context.run_config["rounds"]) + 1):
        nodes = sorted(grid.get_node_ids())
        messages = [Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "config": ConfigRecord({"round": round_})}),
                            node, MessageType.TRAIN, group_id=str(round_)) for node in nodes]
        replies = list(grid.send_and_receive(messages, timeout=60))
        assert len(replies) == len(nodes) and not any(r.has_error() for r in replies), replies
        w = np.mean([r.content["arrays"]["w"].numpy() for r in replies], axis=0)
        counts = {int(r.content["metrics"]["partition-id"]): int(r.content["metrics"]["rounds"]) for r in replies}
    with open(context.run_config["out"], "w") as fh:
        json.dump({"w": w.tolist(), "rounds_per_partition": counts, "finished": time.time()}, fh)
