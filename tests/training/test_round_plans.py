"""Round plans a method owns, through the session: CMSFed's round 1 trains every client one
epoch, later rounds train the selected clients, weak-only ones on one modality; the selection
and the server's numbers reach metrics.jsonl and metrics.csv."""

import csv

from pipelines.engines.local import run as run_local
from pipelines.fl import ClientTask, ClientUpdate
from pipelines.training.progress import QuietProgress
from pipelines.training.session import open_session, trained_only
from tests.training.helpers import partitioned_workspace, quick_config


def test_trained_only_lists_the_clients_a_plan_restricted_to_one_modality():
    plan = [ClientTask(0), ClientTask(1, ("visual",)), ClientTask(2, ("audio",)), ClientTask(4, ("visual",))]
    updates = [ClientUpdate(c, 5, {}, set(), {}) for c in (0, 1, 2)]   # client 4 had nothing to train
    assert trained_only(plan, updates) == {"audio": [2], "visual": [1]}


def test_cmsfed_rounds_follow_its_plan_and_log_the_selection(tmp_path):
    ws = partitioned_workspace(tmp_path, clients=6, missing=0.0)
    session = open_session(ws, quick_config(method="cmsfed", rounds=3, clients_per_round=3,
                                            **{"cmsfed.theta": 1.0}), name="cms")
    first = session.round_plan(1)
    assert first == [ClientTask(c, None, 1) for c in range(6)]
    seen_tasks = {}
    real = session.method.client_update

    def spy(global_state, pool, client, round_idx, seed, client_state=None, **plan):
        seen_tasks[(round_idx + 1, client.cid)] = plan["task"]
        return real(global_state, pool, client, round_idx, seed, client_state, **plan)

    session.method.client_update = spy
    run_local(session, QuietProgress())
    lines = session.run.read_metrics()
    assert lines[0]["clients"] == list(range(6)) and lines[0]["trained_only"] == {}
    for line in lines[1:]:
        assert len(line["clients"]) == 3
        for modality, cids in line["trained_only"].items():
            assert set(cids) <= set(line["clients"])
            assert all(seen_tasks[(line["round"], c)].modalities == (modality,) for c in cids)
    # θ = 1: any client leaning the global way is eligible, so some round trains a weak-only client
    assert any(line["trained_only"] for line in lines[1:])
    assert all(line["server"]["global_imbalance"] > 0 for line in lines)
    with open(session.run.path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "server.global_imbalance" in rows[0]
    weak = [k for k in rows[0] if k.startswith("trained_only.")]
    assert weak and all(" ".join(map(str, lines[i]["trained_only"].get(k.split(".", 1)[1], []))) == rows[i][k]
                        for i in range(3) for k in weak)
