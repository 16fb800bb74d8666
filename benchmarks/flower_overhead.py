"""Round time of `--engine flower` (a loopback deployment: SuperLink + SuperNodes as separate
processes) or Flower's simulation runtime against the local engine on the same CREMA-D-sized
workload (run by hand; prints figures, asserts nothing). Targets: a loopback round within 1.3x
the local round at 5 local epochs, a simulation round within 1.1x.

Workload, written to a workspace on disk (the SuperNodes load it from there): 6,698 train
samples, each a (257, 137) float32 spectrogram and 3 frames of 112x112x3 uint8 (random payloads,
CREMA-D's literature split with the frame size of the modality-imbalance papers), 6 classes,
744 val + 744 test samples; `cmi partition --alpha 5 --clients 20 --missing 0.3` (the paper's
CREMA-D split: clients of similar size); 5 clients per round, batch 32, the small encoders, and 5
local epochs by default. A deployment's fixed cost per round (the fresh ClientApp process per
message, the SuperNode's hard-coded 3 s poll when it finds no message and 0.5 s poll for the
ClientApp's reply, the transfers) is reported in seconds as well.

Both engines train the same rounds from the same seed (evaluation only in the last round). A
round's time is the gap between two consecutive rounds reported finished on the progress
interface (the Flower engine notices a finished round within 0.5 s); round 1 (first calls,
the SuperNodes' first ClientApp) and the evaluated last round are left out of the means.
Start-up (deployment, ServerApp, SuperNode discovery) is reported apart. Last, the cost of one
message in a fresh process, as a deployed SuperNode pays it every round: the imports of Flower's
ClientApp runtime and of cmi's ClientApp, and building what a train message needs (median of 3).

    python benchmarks/flower_overhead.py                     # FedAvg, 2 SuperNodes, 4 rounds, 5 epochs
    python benchmarks/flower_overhead.py --methods fedavg,fedcmi --local-epochs 1 --alpha 0.5
    python benchmarks/flower_overhead.py --simulation        # Flower's simulation runtime (Ray)
    python benchmarks/flower_overhead.py --supernodes 1 --threads 1   # one core for each engine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workload import CLASSES, EVAL_SAMPLES, ROOT, SPECS, TRAIN_SAMPLES  # also puts the checkout on sys.path

from pipelines.artifacts import Workspace, write_manifest  # noqa: E402
from pipelines.engines.flower.run import FlowerOptions, run as run_flower  # noqa: E402
from pipelines.engines.local import run as run_local  # noqa: E402
from pipelines.partitioning import PartitionSettings, run_partition  # noqa: E402
from pipelines.shards import SHARD_DIR, build_table, write_shard  # noqa: E402
from pipelines.training.config import resolve_config  # noqa: E402
from pipelines.training.progress import QuietProgress  # noqa: E402
from pipelines.training.session import open_session  # noqa: E402
from pipelines.training.threads import use_threads  # noqa: E402

SHARD_ROWS = 256

#: run in a fresh interpreter: time the imports of a ClientApp process and the set-up of one message
CLIENTAPP_PROBE = """
import json, sys, time
start = time.perf_counter()
import flwr.supernode.runtime.run_clientapp
flower = time.perf_counter()
from pipelines.artifacts import Workspace
from pipelines.engines.flower import client_app
from pipelines.engines.flower.protocol import RunSettings
imported = time.perf_counter()
client_app.worker(Workspace(sys.argv[1]), RunSettings(**json.loads(sys.argv[2])))
print(json.dumps([flower - start, imported - flower, time.perf_counter() - imported]))
"""


def write_dataset(ws: Workspace, n_train: int, n_eval: int, seed: int = 0) -> None:
    """A dataset artifact of random CREMA-D-shaped payloads, written shard by shard."""
    rng = np.random.default_rng(seed)
    splits = np.array(["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval)
    directory = ws.artifact_dir("dataset", "cremad-sized")
    shards = []
    for k, start in enumerate(range(0, len(splits), SHARD_ROWS)):
        rows = np.arange(start, min(start + SHARD_ROWS, len(splits)))
        payloads = {"audio": rng.standard_normal((len(rows), *SPECS[0].shape), dtype=np.float32),
                    "visual": rng.integers(0, 256, (len(rows), *SPECS[1].shape), dtype=np.uint8)}
        table = build_table(SPECS, [f"clip-{i:05d}" for i in rows], rng.integers(0, len(CLASSES), len(rows)),
                            list(splits[rows]), [None] * len(rows), payloads,
                            {s.name: np.ones(len(rows), bool) for s in SPECS})
        shards.append(f"{SHARD_DIR}/part-{k:05d}.parquet")
        write_shard(table, directory / shards[-1])
    counts = {s: int((splits == s).sum()) for s in ("train", "val", "test")}
    write_manifest(directory, "dataset", {"benchmark": "flower_overhead", "seed": seed}, files=shards, extra={
        "dataset": "cremad-sized", "classes": CLASSES, "modalities": [s.to_dict() for s in SPECS],
        "shards": shards, "counts": counts, "rejects": 0})
    ws.set_latest("dataset", "cremad-sized")


class RoundClock(QuietProgress):
    """When each round was reported finished (perf_counter), and when the engine started."""

    def __init__(self):
        self.started = time.perf_counter()
        self.finished: dict[int, float] = {}

    def round_finished(self, result) -> None:
        self.finished[result.round] = time.perf_counter()

    def round_times(self) -> dict[int, float]:
        rounds = sorted(self.finished)
        return {r: self.finished[r] - self.finished[r - 1] for r in rounds if r - 1 in self.finished}


def bench(ws: Workspace, method: str, engine: str, args) -> RoundClock:
    config = resolve_config({
        "method": method, "engine": engine, "rounds": args.rounds, "clients_per_round": args.per_round,
        "eval_every": args.rounds, "device": "cpu", "seed": 0,
        "train": {"local_epochs": args.local_epochs, "batch_size": 32},
    })
    session = open_session(ws, config, name=f"{method}-{engine}", force=True)
    clock = RoundClock()
    if engine == "local":
        with use_threads(args.threads or torch.get_num_threads()):
            run_local(session, clock)
    else:
        run_flower(session, clock, FlowerOptions(supernodes=args.supernodes, node_threads=args.threads or None,
                                                 round_timeout=3600, simulation=args.simulation))
    return clock


def clientapp_cost(ws: Workspace, method: str, repeats: int = 3) -> list[float]:
    """Median seconds of (Flower's ClientApp runtime imports, cmi's ClientApp imports, building the
    method and mapping the data) in a fresh process, for the run ``<method>-flower``."""
    run_dir = ws.artifact_dir("run", f"{method}-flower")
    settings = {"workspace": str(ws.root), "run": str(run_dir), "partition": ws.resolve("partition").name,
                "config": (run_dir / "config.json").read_text(encoding="utf-8")}
    times = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", CLIENTAPP_PROBE, str(ws.root), json.dumps(settings)],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return [float(np.median(column)) for column in zip(*times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="fedavg")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per engine (the last one evaluates)")
    parser.add_argument("--supernodes", type=int, default=2, help="SuperNodes of the loopback deployment")
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the local engine and of each SuperNode (0: torch's default for the "
                             "local engine, the cores split between the SuperNodes)")
    parser.add_argument("--simulation", action="store_true",
                        help="Flower's simulation runtime (Ray) instead of a loopback deployment")
    parser.add_argument("--alpha", type=float, default=5.0, help="Dirichlet label skew of the partition")
    parser.add_argument("--train", type=int, default=TRAIN_SAMPLES)
    parser.add_argument("--eval", type=int, default=EVAL_SAMPLES, help="val and test samples each")
    parser.add_argument("--workspace", type=Path, help="keep the workspace here (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(args.workspace or Path(tmp) / "ws")
        t0 = time.perf_counter()
        if "cremad-sized" not in ws.list("dataset"):
            write_dataset(ws, args.train, args.eval)
        run_partition(ws, PartitionSettings.from_options(alpha=args.alpha, clients=args.clients, missing=0.3, seed=0))
        print(f"workload: {args.train} train + 2x{args.eval} eval samples on disk, {args.clients} clients "
              f"(Dirichlet {args.alpha:g}, {args.per_round}/round), {args.local_epochs} local epoch(s), "
              f"{args.rounds} rounds, Flower {'simulation' if args.simulation else 'deployment'} with "
              f"{args.supernodes} SuperNode(s); ready in {time.perf_counter() - t0:.0f} s")
        for method in args.methods.split(","):
            clocks = {engine: bench(ws, method, engine, args) for engine in ("local", "flower")}
            means = {}
            for engine, clock in clocks.items():
                times = clock.round_times()
                training = [t for r, t in times.items() if r < args.rounds]
                means[engine] = float(np.mean(training)) if training else float("nan")
                first = clock.finished[1] - clock.started
                print(f"{method:>8} {engine:>6}: training round {means[engine]:6.1f} s (rounds 2..{args.rounds - 1}: "
                      + ", ".join(f"{t:.1f}" for t in training) + f"); start-up + round 1 {first:.1f} s; "
                      f"evaluated last round {times.get(args.rounds, float('nan')):.1f} s")
            target = 1.1 if args.simulation else 1.3
            print(f"{method:>8} flower / local training round: {means['flower'] / means['local']:.2f}x "
                  f"(target <= {target}x); Flower adds {means['flower'] - means['local']:+.1f} s per round")
            flower_imports, cmi_imports, setup = clientapp_cost(ws, method)
            print(f"{method:>8} one message in a fresh ClientApp process: Flower runtime imports {flower_imports:.2f} s, "
                  f"cmi ClientApp imports {cmi_imports:.2f} s, method and data {setup:.3f} s")


if __name__ == "__main__":
    main()
