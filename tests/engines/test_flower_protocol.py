"""The messages between the cmi ServerApp and ClientApp survive Flower's own serialisation
exactly, and the run config keys agree with the Flower app's pyproject.toml."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from pipelines.engines.flower.protocol import (
    ClientOrder, NodeSettings, RunSettings, balance, decode_divergence, decode_node, decode_train, decode_updates,
    encode_divergence, encode_node, encode_train, encode_updates, host_of, hosted_clients, state_record, train_clients,
)
from pipelines.engines.flower.run import APP_DIR
from pipelines.errors import CmiError
from pipelines.fl import ClientUpdate
from pipelines.training.config import tomllib


def wire(content: RecordDict) -> RecordDict:
    """``content`` after the byte-level round trip Flower applies between processes."""
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    return inflate_object_from_contents(content.object_id, objects)


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"enc.weight": torch.randn(4, 3, generator=g), "bn.num_batches_tracked": torch.tensor(7 + seed),
            "fusion.bias": torch.randn(5, generator=g).double()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_train_message_round_trip_is_exact():
    global_state, own = state(0), state(1)
    orders = [ClientOrder(7, 123456789, ("visual",), own), ClientOrder(2, 42, ("audio", "visual"))]
    order = decode_train(wire(encode_train(3, "f" * 64, state_record(global_state), orders)))
    assert (order.round, order.partition_fingerprint) == (3, "f" * 64)
    assert_same_state(order.global_state, global_state)
    assert [(c.cid, c.seed, c.modalities) for c in order.clients] == [(2, 42, ("audio", "visual")),
                                                                      (7, 123456789, ("visual",))]
    assert order.clients[0].client_state is None
    assert_same_state(order.clients[1].client_state, own)
    assert train_clients(encode_train(1, "", state_record(global_state), orders)) == [2, 7]


def test_updates_round_trip_keeps_metrics_and_skips_untrained_states():
    global_state = state(0)
    trained = ClientUpdate(5, 31, state(2), {"audio.encoder", "fusion"},
                           {"loss": 0.123456789012345, "temperatures": [1.0, 0.75, 0.5]}, client_state=state(4))
    idle = ClientUpdate(1, 0, global_state, set(), {"loss": 0.0})
    diverged = ClientUpdate(3, 8, state(3), {"fusion"}, {"loss": math.nan})
    content = encode_updates([trained, idle, diverged])
    assert set(content.array_records) == {"update.5", "client-state.5", "update.3"}  # the idle client sends none
    got = decode_updates(wire(content), global_state)
    assert [u.cid for u in got] == [1, 3, 5]
    assert got[0].state is global_state and got[0].trained_groups == set() and got[0].num_samples == 0
    assert math.isnan(got[1].metrics["loss"])
    assert got[2].num_samples == 31 and got[2].trained_groups == {"audio.encoder", "fusion"}
    assert got[2].metrics == trained.metrics
    assert_same_state(got[2].state, trained.state)
    assert_same_state(got[2].client_state, trained.client_state)
    assert got[0].client_state is None and got[1].client_state is None


def test_divergence_round_trip():
    assert decode_divergence(wire(encode_divergence(4, "has a non-finite local loss (nan)"))) == \
        (4, "has a non-finite local loss (nan)")
    assert decode_divergence(encode_updates([])) is None


def test_node_answer_round_trip():
    info = decode_node(99, wire(encode_node(NodeSettings(2, 3, any_client=True), "ab" * 32)))
    assert (info.node_id, info.partition_id, info.num_partitions, info.partition_fingerprint, info.any_client) == \
        (99, 2, 3, "ab" * 32, True)


def test_balance_gives_the_largest_load_to_the_least_loaded_bin():
    # 50 -> A; 40 -> B; 30 -> B (40 < 50); 20 -> A (50 < 70); 10 -> A (A 70 = B 70: the first bin)
    assert balance({0: 50, 1: 40, 2: 30, 3: 20, 4: 10}, ["A", "B"]) == {"A": [0, 3, 4], "B": [1, 2]}
    assert balance({7: 5}, ["A", "B", "C"]) == {"A": [7]}   # bins left empty are left out
    assert balance({}, ["A"]) == {}


@pytest.mark.parametrize("num_partitions", [1, 3, 7, 20, 25])
def test_supernodes_host_every_client_exactly_once(num_partitions):
    hosted = [hosted_clients(p, num_partitions, 20) for p in range(num_partitions)]
    flat = sorted(c for clients in hosted for c in clients)
    assert flat == list(range(20))
    assert all(host_of(c, num_partitions) == p for p, clients in enumerate(hosted) for c in clients)


def test_run_settings_are_the_app_run_config():
    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        app_config = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    defaults = RunSettings(workspace="", run="", partition="", config="").to_run_config()
    assert defaults == app_config  # same keys, same defaults
    settings = RunSettings("/ws", "/ws/runs/r", "p", "{}", 12.5, 2, 30.0, True)
    assert RunSettings.from_run_config(settings.to_run_config()) == settings
    with pytest.raises(CmiError, match="cmi train --engine flower"):
        RunSettings.from_run_config(defaults)


def test_node_settings_name_the_missing_node_config():
    assert NodeSettings.from_node_config({"partition-id": 1, "num-partitions": 3, "threads": 2}) == \
        NodeSettings(1, 3, None, 2, any_client=False)
    assert NodeSettings.from_node_config({"partition-id": 0, "num-partitions": 1, "any-client": True,
                                          "workspace": "/data/ws"}) == NodeSettings(0, 1, "/data/ws", None, True)
    with pytest.raises(CmiError, match="--node-config 'partition-id=I num-partitions=N'"):
        NodeSettings.from_node_config({})
    with pytest.raises(CmiError, match="outside 0..2"):
        NodeSettings.from_node_config({"partition-id": 3, "num-partitions": 3})
