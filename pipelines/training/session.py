"""One training run between rounds: what an engine needs to plan a round and to finish it.

An engine (local loop, Flower ServerApp) asks :meth:`TrainingSession.round_plan` which clients
train and what (the method's ``plan_round``), gets their updates (each computed with
:func:`~pipelines.training.rounds.client_seed` and the method's :meth:`TrainingSession.broadcast`
by ``method.client_update`` and checked by :func:`~pipelines.training.rounds.check_update`), and
hands them to :meth:`TrainingSession.finish_round`, which aggregates (``method.server_update``:
new global and server state), evaluates when due, logs metrics, saves predictions and
checkpoints (global and server state).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

import pipelines
from pipelines.artifacts import Artifact, Workspace, eval_paths as paths_for, fingerprint
from pipelines.errors import CmiError
from pipelines.fl import ClientTask, ClientUpdate, FedAvg, ServerState, TrainPool
from pipelines.training.config import RunConfig, config_toml, resolve_config
from pipelines.training.data import TrainingData, load_training_data
from pipelines.training.evaluation import Predictions, client_accuracy, predict, selection_path, split_metrics
from pipelines.training.rounds import (
    POOLED_CLIENT, TrainingDiverged, build_method, client_seed, init_seed, mean_loss, mean_temperatures,
    method_clients, resolve_device, train_client,
)
from pipelines.training.run_dir import RUN_CONFIG_TOML, Checkpoint, RunDirectory, State, state_bytes
from pipelines.training.threads import use_threads


@dataclass
class RoundResult:
    """What finishing a round produced: the trained/skipped clients and, on evaluated rounds,
    the metrics line."""

    round: int
    clients: list[int]
    skipped: list[int]
    record: dict[str, Any] | None


class TrainingSession:
    """A run's config, data, method and current state; see the module docstring.

    Build it with :func:`open_session` (new or same-settings run) or :func:`resume_session`.
    """

    def __init__(self, run: RunDirectory, config: RunConfig, data: TrainingData, device: torch.device):
        self.run, self.config, self.data, self.device = run, config, data, device
        self.method = build_method(config, data.specs, data.num_classes, device)
        self.method_cls: type[FedAvg] = type(self.method)
        self.eval_paths = paths_for(list(data.modalities))
        self.model_specs = self.method_cls.select_specs(data.specs, config.hparams)
        self.eval_model = self.method.model   # evaluation loads each state it predicts with, as training does
        self.global_state: State = {k: v.to(device) for k, v in self._initial_model().state_dict().items()}
        self.client_states = run.client_states()   # on disk, read when needed (non-federated methods)
        self._predictions: dict[tuple, Predictions] = {}   # cache of _model_predictions, by state digest
        self.selection = selection_path(self.eval_model.modalities)
        self.rounds_done = 0
        self.best_round: int | None = None
        self.best_score: float | None = None
        self.identity = run_identity(config, data.partition)
        self.clients = method_clients(self.method, data)
        self.server_state: ServerState = self.method.init_server_state(len(self.clients), data.num_classes)
        self._plans: dict[int, list[ClientTask]] = {}   # round -> its plan, until the round is finished
        if not self.method_cls.pooled and config.clients_per_round > len(self.clients):
            raise CmiError(
                f"clients_per_round is {config.clients_per_round} but partition {data.partition.name} has "
                f"{len(self.clients)} clients; lower --clients-per-round or run `cmi partition` with more clients."
            )

    def _initial_model(self) -> torch.nn.Module:
        return self.method_cls.network(self.model_specs, self.data.num_classes, self.config.model, self.config.hparams,
                                       seed=init_seed(self.config.seed))

    # ------------------------------------------------------------------ state

    @property
    def next_round(self) -> int:
        return self.rounds_done + 1

    @property
    def finished(self) -> bool:
        return self.rounds_done >= self.config.rounds

    @property
    def recorded_threads(self) -> int | None:
        """The torch thread count the run last trained with (None before its first start)."""
        return self.run.artifact().manifest.get("threads")

    def inputs(self) -> dict[str, str]:
        """The run manifest's ``inputs``: fingerprints of the dataset and partition."""
        return {"dataset": self.data.dataset.fingerprint, "partition": self.data.partition.fingerprint}

    def begin(self) -> None:
        """Create the run directory (manifest with status ``running``, config.json, config.toml)
        of a new run, or continue an existing one from its last checkpoint. The manifest also
        records the cmi, torch and Python versions and the command line that started the run."""
        if self.run.exists():
            self.restore()
            self.mark_resumed()
            return
        data, config = self.data, self.config
        versions = {"cmi": pipelines.__version__, "torch": torch.__version__, "python": platform.python_version()}
        header = (f"Settings of run {self.run.name} (cmi {versions['cmi']}, torch {versions['torch']}, Python "
                  f"{versions['python']}).\n`cmi train --config {RUN_CONFIG_TOML} --name NEW` trains it again; "
                  "give it the run's --threads (manifest.json: threads) for identical numbers.")
        toml = config_toml(config, partition=data.partition.name, dataset=data.dataset.name, header=header)
        self.run.create(config.to_dict(), toml, self.inputs(), {
            "method": config.method,
            "engine": config.engine,
            "dataset": data.dataset.name,
            "partition": data.partition.name,
            "classes": data.classes,
            "modalities": list(data.modalities),
            "eval_paths": self.eval_paths,
            "rounds_done": 0,
            "rounds_total": config.rounds,
            "best_round": None,
            "device": str(self.device),
            "identity": self.identity,
            "versions": versions,
            "command": shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        })

    def restore(self) -> None:
        """Continue from the last checkpoint if there is one (metrics past it are dropped)."""
        ckpt = self.run.load_checkpoint()
        if ckpt is not None and ckpt.identity != self.identity:
            raise CmiError(
                f"the checkpoint in {self.run.path} belongs to other settings; start the run again with --force."
            )
        if ckpt is not None:
            self.global_state = {k: v.to(self.device) for k, v in ckpt.global_state.items()}
            self.server_state = dict(ckpt.server_state)
            self._plans = {}
            self.client_states.reset(ckpt.clients)
            self.rounds_done, self.best_round, self.best_score = ckpt.round, ckpt.best_round, ckpt.best_score
        self.run.truncate_metrics(self.rounds_done)

    # ------------------------------------------------------------------ one round

    def round_plan(self, round_: int) -> list[ClientTask]:
        """The tasks of ``round_`` (the method's ``plan_round`` from the current server state,
        ascending by client id); asked again before the round is finished, the same plan."""
        if round_ not in self._plans:
            if self.method_cls.pooled:
                plan = [ClientTask(POOLED_CLIENT)]
            else:
                plan = self.method.plan_round(round_ - 1, self.clients, self.config.clients_per_round,
                                              self.config.seed, self.server_state)
            self._plans = {round_: plan}
        return self._plans[round_]

    def plan_round(self, round_: int) -> list[int]:
        """The client ids that train in ``round_``."""
        return [task.cid for task in self.round_plan(round_)]

    def task(self, round_: int, cid: int) -> ClientTask:
        """Client ``cid``'s task in ``round_`` (a client outside the plan: every modality)."""
        return next((t for t in self.round_plan(round_) if t.cid == cid), ClientTask(cid))

    def broadcast(self) -> ServerState:
        """What every client of the next round receives from the server state (``method.broadcast``)."""
        return self.method.broadcast(self.server_state)

    def client_seed(self, round_: int, cid: int) -> int:
        return client_seed(self.config.seed, round_, cid)

    def client_update(self, round_: int, cid: int) -> ClientUpdate:
        """Client ``cid``'s local update of ``round_``, in this process (see :func:`train_client`)."""
        return train_client(self.method, self.global_state, self.data.train.pool, self.clients[cid], round_,
                            self.client_seed(round_, cid), self.client_states.get(cid),
                            task=self.task(round_, cid), broadcast=self.broadcast())

    def finish_round(self, round_: int, updates: list[ClientUpdate], started: float,
                     failed: Sequence[int] = ()) -> RoundResult:
        """Aggregate ``updates`` (those with samples; the others are skipped), evaluate when due,
        write metrics/predictions and the checkpoint (the states of the clients trained in the
        round, when the method keeps any, are written then). ``updates`` must have passed
        :func:`~pipelines.training.rounds.check_update` (``train_client`` checks them; the Flower
        strategy checks what it receives). ``started`` is the round's ``time.perf_counter()``
        start; ``failed`` lists clients an engine lost in the round (logged as ``failed_clients``)."""
        trained = [u for u in updates if u.num_samples > 0]
        skipped = sorted(u.cid for u in updates if u.num_samples == 0)
        plan = self.round_plan(round_)
        if trained:
            self.global_state, self.server_state = self.method.server_update(
                self.global_state, self.server_state, trained, round_ - 1)
        self._plans = {}
        for update in trained:
            if update.client_state is not None:
                self.client_states.put(update.cid, update.client_state)
        record = None
        if round_ % self.config.eval_every == 0 or round_ == self.config.rounds:
            record = self._evaluate(round_, trained, started, failed, plan)
            self.server_state = self.method.observe_evaluation(self.server_state, record)
        self.rounds_done = round_
        self.run.save_checkpoint(Checkpoint(round_, self.global_state, dict(self.client_states.digests),
                                            self.best_round, self.best_score, self.identity, self.server_state))
        self.run.update(rounds_done=round_, best_round=self.best_round)
        return RoundResult(round_, sorted(u.cid for u in trained), skipped, record)

    def complete(self) -> None:
        self.run.update(status="complete", rounds_done=self.rounds_done, best_round=self.best_round)

    def mark(self, status: str) -> None:
        self.run.update(status=status)

    def mark_resumed(self) -> None:
        """Status after :meth:`restore`: ``running``, or ``complete`` when every round is done
        (a kill may have come between the last checkpoint and the final status)."""
        if self.finished:
            self.complete()
        else:
            self.run.update(status="running", device=str(self.device))

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around an engine's rounds: a divergence marks the run ``diverged`` (its last good
        checkpoint stays), another error ``failed``; an interrupt leaves it ``running``
        (resumable); success marks it ``complete``."""
        try:
            yield
        except TrainingDiverged as exc:
            self.mark("diverged")
            kept = f" The last good checkpoint (round {self.rounds_done}) is kept in {self.run.path}." \
                if self.rounds_done else ""
            raise TrainingDiverged(exc.round, exc.cid, exc.what, kept) from None
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.mark("failed")
            raise
        self.complete()

    # ------------------------------------------------------------------ evaluation

    def _models(self) -> list[tuple[int | None, str | None]]:
        """The evaluated models as (client id, state digest): the global model alone, (None,
        None), for a federated method; else every client's own model, the digest of its state (of
        the global state for a client never trained), which keys the cached predictions."""
        if self.method_cls.federated:
            return [(None, None)]
        global_digest = hashlib.sha256(state_bytes(self.global_state)).hexdigest()
        return [(c.cid, self.client_states.digests.get(c.cid, global_digest)) for c in self.clients]

    def _model_predictions(self, cid: int | None, key: tuple | None, pool: TrainPool,
                           indices: np.ndarray | None = None) -> Predictions:
        """Client ``cid``'s model (the global one for None or a client never trained) on ``pool``
        rows ``indices``. With a ``key`` (ending in the state's digest) the predictions are cached:
        a model whose state did not change since it was last evaluated is not run again."""
        if key is not None and key in self._predictions:
            return self._predictions[key]
        self.eval_model.load_state_dict(self.client_states.get(cid, self.global_state))
        pred = predict(self.eval_model, pool, self.eval_paths, self.data.modalities, self.config.eval_batch_size,
                       indices)
        if key is not None:
            self._predictions[key] = pred
        return pred

    def _train_pool_due(self, round_: int) -> bool:
        """Whether an evaluated round evaluates on the training pool by the ``eval_train_every``
        schedule (a new best round does in any case, for its saved client predictions)."""
        every = self.config.eval_train_every
        return every is None or round_ % every == 0 or round_ == self.config.rounds

    def _evaluate(self, round_: int, updates: list[ClientUpdate], started: float,
                  failed: Sequence[int], plan: Sequence[ClientTask]) -> dict[str, Any]:
        models = self._models()
        blocks: dict[str, dict[str, Any]] = {}
        split_preds: dict[str, Predictions] = {}
        for split, samples in self.data.splits.items():
            if len(samples):
                split_preds[split] = Predictions.concat([
                    self._model_predictions(cid, None if digest is None else (split, digest), samples.pool)
                    for cid, digest in models])
                blocks[split] = split_metrics(split_preds[split], self.data.num_classes)
            else:
                blocks[split] = None
        record = {
            "round": round_,
            "clients": sorted(u.cid for u in updates),
            "failed_clients": sorted(int(c) for c in failed),
            "train_loss": mean_loss(updates),
            "temperatures": mean_temperatures(updates),
            "val": blocks.get("val"),
            "test": blocks.get("test"),
            "client_accuracy": None,
        }
        if self.method_cls.selects_modalities:
            record["trained_only"] = trained_only(plan, updates)
        server = self.method.server_metrics(self.server_state)
        if server:
            record["server"] = server
        score = (blocks.get("val") or {}).get("accuracy", {}).get(self.selection)
        improved = self.best_round is None or score is None or self.best_score is None or score > self.best_score
        snapshots = (["best"] if improved else []) + (["final"] if round_ == self.config.rounds else [])
        if improved:
            self.best_round, self.best_score = round_, score
            if self.method_cls.federated:
                self.run.save_best(self.global_state, round_)
        if improved or self._train_pool_due(round_):
            train_ids, train_client, routed, labels = self._client_predictions(models)
            record["client_accuracy"] = client_accuracy(train_client, labels, routed)
            for which in snapshots:
                self._write_predictions(which, round_, models, split_preds.get("test"), train_ids, train_client,
                                        labels, routed)
        live = {digest for _, digest in models}
        self._predictions = {key: pred for key, pred in self._predictions.items() if key[-1] in live}
        record["time_s"] = round(time.perf_counter() - started, 4)
        self.run.append_metrics(record)
        return record

    def _client_predictions(self, models: list[tuple[int | None, str | None]]):
        """Routed predictions of the evaluated model(s) on every client's own training rows:
        (ids, client, routed, labels), rows grouped by client for a non-federated method."""
        train = self.data.train
        if self.method_cls.federated:
            pred = self._model_predictions(None, None, train.pool)
            return train.ids, self.data.train_client, pred.routed, pred.labels
        rows = [c.indices for c in self.clients]
        preds = [self._model_predictions(cid, ("train", cid, digest), train.pool, c.indices)
                 for (cid, digest), c in zip(models, self.clients)]
        order = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        merged = Predictions.concat(preds)
        return train.ids[order], self.data.train_client[order], merged.routed, merged.labels

    def _write_predictions(self, which: str, round_: int, models, test: Predictions | None, train_ids,
                           train_client, labels, routed) -> None:
        if test is not None:
            ids = self.data.splits["test"].ids
            model_col = None
            if not self.method_cls.federated:
                model_col = np.repeat(np.array([cid for cid, _ in models]), len(ids))
                ids = np.tile(ids, len(models))
            self.run.write_test_predictions(which, ids, test.labels, test.paths, round_, model_col)
        self.run.write_client_predictions(which, train_ids, train_client, labels, routed, round_)


def trained_only(plan: Sequence[ClientTask], updates: Sequence[ClientUpdate]) -> dict[str, list[int]]:
    """Modality -> the clients (of ``updates``) that trained only it in the round, as ``plan``
    said: the selection decisions of a method that ``selects_modalities`` (CMSFed's weak-only
    clients), logged as the metrics line's ``trained_only``."""
    trained = {u.cid for u in updates}
    only: dict[str, list[int]] = {}
    for task in plan:
        if task.cid in trained and task.modalities is not None and len(task.modalities) == 1:
            only.setdefault(task.modalities[0], []).append(task.cid)
    return {m: sorted(cids) for m, cids in sorted(only.items())}


# ---------------------------------------------------------------------- opening a run


def run_identity(config: RunConfig, partition: Artifact) -> str:
    """Short hash of what a run computes: its config (device aside) and its exact inputs, the
    partition and the dataset it was made from (whose fingerprint the partition records)."""
    return fingerprint([config.identity(), partition.fingerprint, partition.manifest["inputs"]["dataset"]])[:8]


def default_run_name(config: RunConfig, data: TrainingData) -> str:
    """``<method>-<dataset>-s<seed>-<identity>``, e.g. ``fedcmi-synthetic-s0-4ecdff``: the
    identity hash stands for the partition and every other setting."""
    return f"{config.method}-{data.dataset.name}-s{config.seed}-{run_identity(config, data.partition)[:6]}"


def open_session(workspace: Workspace, config: RunConfig, *, partition: str | None = None,
                 name: str | None = None, force: bool = False, dataset: str | None = None) -> TrainingSession:
    """Start a run of ``config`` on ``partition`` (latest by default), which must come from
    ``dataset`` when that is given (a run's config.toml says both). An existing run directory
    of the same name and settings is continued (so repeating an interrupted command resumes it);
    ``force`` deletes it and starts over."""
    data = load_training_data(workspace, partition)
    if dataset is not None and data.dataset.name != dataset:
        raise CmiError(
            f"partition {data.partition.name} was made from dataset {data.dataset.name}, not {dataset}; pass "
            f"--partition with a partition of {dataset} (`cmi partition --dataset {dataset}` makes one)."
        )
    run = RunDirectory(workspace.artifact_dir("run", name or default_run_name(config, data)))
    if run.path.exists() and force:
        shutil.rmtree(run.path)
    session = TrainingSession(run, config, data, resolve_device(config.device))
    if run.exists() and run.artifact().manifest.get("identity") != session.identity:
        raise CmiError(
            f"run {run.name} already exists with other settings or inputs; choose another --name, "
            f"or pass --force to start it over."
        )
    return _begin(workspace, session)


def run_engine(session: TrainingSession, progress, *, threads: int, flower_options=None) -> None:
    """Train ``session``'s remaining rounds on its engine with ``threads`` torch threads (the
    previous count is restored after), recording the thread count and this process (``pid``,
    ``host``: `cmi runs` tells an interrupted run from a running one by them) in the manifest.
    ``flower_options`` (a FlowerOptions) are for ``engine = "flower"`` only."""
    from pipelines.engines import get_engine  # late: the engines import this module

    engine = get_engine(session.config.engine)
    with use_threads(threads):
        session.run.update(threads=threads, pid=os.getpid(), host=socket.gethostname())
        if session.config.engine == "flower":
            engine(session, progress, flower_options)
        else:
            engine(session, progress)


def _begin(workspace: Workspace, session: TrainingSession) -> TrainingSession:
    session.begin()
    workspace.set_latest("run", session.run.name)
    return session


def resume_session(workspace: Workspace, run_ref: str, *, device: str | None = None) -> TrainingSession:
    """Continue run ``run_ref`` with its saved config (``device`` may change) from its last
    checkpoint; its partition and dataset must be unchanged."""
    artifact = workspace.resolve("run", run_ref)
    run = RunDirectory(artifact.path)
    saved = run.read_config()
    if device is not None:
        saved["device"] = device
    config = resolve_config(saved)
    data = load_training_data(workspace, artifact.manifest.get("partition"))
    session = TrainingSession(run, config, data, resolve_device(config.device))
    if artifact.manifest.get("inputs") != session.inputs():
        raise CmiError(
            f"the partition or dataset of run {run.name} changed since it started, so it cannot be resumed; "
            f"start a new run with `cmi train` (or re-create this one with --force)."
        )
    return _begin(workspace, session)

