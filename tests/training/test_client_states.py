"""Method ``local`` with many clients and few per round: client states live on disk (CPU), a
round's checkpoint writes only the states of the clients it trained, files no longer referenced
are deleted, and evaluation does not predict again with a client model that did not change."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from pipelines.engines.local import run as run_local
from pipelines.training import session as session_module
from pipelines.training.progress import QuietProgress
from pipelines.training.run_dir import state_bytes
from pipelines.training.session import open_session
from tests.training.helpers import partitioned_workspace, quick_config

CLIENTS, PER_ROUND, ROUNDS = 30, 2, 6


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("many-clients"), clients=CLIENTS, missing=0.3, alpha=5.0,
                                 per_class={"train": 60, "val": 6, "test": 6})


def local_config(**overrides):
    return quick_config(**{"method": "local", "rounds": ROUNDS, "clients_per_round": PER_ROUND, **overrides})


class FilesPerRound(QuietProgress):
    """After each round: the checkpoint files written in it (new (name, inode, mtime)) and the
    clients that trained (had samples)."""

    def __init__(self, checkpoints):
        self.checkpoints, self.seen, self.rounds, self.trained = checkpoints, set(), [], []

    def round_started(self, round_, clients) -> None:
        self.trained.append([])

    def client_finished(self, update) -> None:
        if update.num_samples:
            self.trained[-1].append(update.cid)

    def round_finished(self, result) -> None:
        files = {}
        for path in self.checkpoints.rglob("*"):
            if path.is_file():
                st = path.stat()
                files[(path.relative_to(self.checkpoints).as_posix(), st.st_ino, st.st_mtime_ns)] = st.st_size
        self.rounds.append({key: size for key, size in files.items() if key not in self.seen})
        self.seen = set(files)


def test_a_round_writes_the_states_of_the_clients_it_trained_not_of_all_clients(ws):
    session = open_session(ws, local_config(), name="bytes-per-round")
    log = FilesPerRound(session.run.path / "checkpoints")
    run_local(session, log)
    state_size = len(state_bytes(session.global_state))
    sizes = []
    for written, trained in zip(log.rounds, log.trained):
        clients = {name: size for (name, _, _), size in written.items() if name.startswith("clients/")}
        assert 1 <= len(trained) <= PER_ROUND
        assert len(clients) == len(trained)                     # one file per trained client, no other
        assert all(size == state_size for size in clients.values())
        others = {name for (name, _, _) in written} - set(clients)
        assert others <= {"last.safetensors", "best.safetensors"} and "last.safetensors" in others
        sizes.append(sum(written.values()))
    assert len(session.client_states) > 2 * PER_ROUND           # states held for many more clients than a round trains
    # what a round writes stays bounded by (global + best + the round's clients), whatever the clients with states
    global_size = len(state_bytes(session.global_state))
    assert max(sizes) < 2 * global_size + PER_ROUND * state_size + 16_384
    # the checkpoint references every state; unreferenced files are gone
    files = sorted(p.stem for p in session.client_states.directory.iterdir())
    assert files == sorted(set(session.run.load_checkpoint().clients.values()))
    assert set(session.run.load_checkpoint().clients) == {c for round_ in log.trained for c in round_}
    last = load_file(str(session.run.checkpoint_file))
    assert set(last) == {f"global/{k}" for k in session.global_state}   # no client tensor in the checkpoint itself


def test_evaluation_predicts_only_with_the_models_that_changed_and_equals_a_full_evaluation(ws, monkeypatch):
    calls = []
    real = session_module.predict

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "predict", counting)
    cached = open_session(ws, local_config(), name="eval-cached")
    per_round = []

    class Count(QuietProgress):
        def round_finished(self, result) -> None:
            per_round.append(len(calls))
            calls.clear()

    run_local(cached, Count())
    num_splits = len(cached.data.splits)
    # round 1: every client model once (all but the trained ones share the initial state) per eval split, and each
    # client's training rows; later rounds: only the models of the clients trained in the round
    assert per_round[0] == (1 + PER_ROUND) * num_splits + CLIENTS
    assert all(count <= PER_ROUND * (num_splits + 1) for count in per_round[1:])

    full = open_session(ws, local_config(), name="eval-full")
    original = full._evaluate

    def uncached(*args, **kwargs):
        full._predictions = {}
        return original(*args, **kwargs)

    monkeypatch.setattr(full, "_evaluate", uncached)
    run_local(full, QuietProgress())
    strip = lambda lines: [{k: v for k, v in line.items() if k != "time_s"} for line in lines]  # noqa: E731
    assert strip(cached.run.read_metrics()) == strip(full.run.read_metrics())


def test_client_states_are_kept_on_the_cpu_and_read_when_needed(ws):
    session = open_session(ws, local_config(rounds=2), name="cpu-states")
    run_local(session, QuietProgress())
    cid = next(iter(session.client_states.keys()))
    state = session.client_states[cid]
    assert all(t.device.type == "cpu" for t in state.values())
    update = session.client_update(3, cid)
    assert all(t.device.type == "cpu" for t in update.client_state.values())
    assert any(not np.array_equal(update.client_state[k].numpy(), v.numpy()) for k, v in state.items())
