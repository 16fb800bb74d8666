"""Round time, throughput, overhead and memory of `cmi train`'s local engine on a CREMA-D-sized
synthetic workload (run by hand; prints figures, asserts nothing).

Workload (built in memory, random payloads): 6,698 train samples, each a (257, 137) float32
spectrogram and 3 frames of 112x112x3 uint8 (CREMA-D's literature split with the frame size of
the modality-imbalance papers), 6 classes, 744 val + 744 test samples; Dirichlet(0.5) clients
(IID beyond 100 clients), 30% of them missing one modality; ``--per-round`` clients per round,
``--local-epochs`` local epochs (default 1).

For each method, the rounds run through the real engine (:func:`pipelines.engines.local.run`,
checkpoint every round); evaluation (val, test and every client's training data) runs on the
last round only and is reported apart. Time inside the model is measured by wrapping
``MultimodalNet.forward``, ``Tensor.backward`` and ``MomentumSGD.step`` (CUDA synchronised); everything
else in a round (batching and indexing, temperatures bookkeeping, the proximal term, update
checks, aggregation, checkpointing) is overhead: target < 5% of a training round. Round 1 is left
out of the means (FedCMI's warm-up round has no infiltration; first-call costs). Each round also
reports the checkpoint bytes it wrote (files new in ``checkpoints/``): for method ``local`` the
global weights plus the states of the clients it trained, however many clients have one.

    python benchmarks/train_round.py                         # FedAvg vs FedCMI, 20 clients, 5/round
    python benchmarks/train_round.py --clients 1000 --methods fedavg --rounds 3
    python benchmarks/train_round.py --clients 1000 --methods local --rounds 6   # checkpoint bytes per round
    python benchmarks/train_round.py --encoder resnet18 --embed-dim 512 --device cuda
    python benchmarks/train_round.py --methods fedavg,cmsfed,pmr,ogm_ge --rounds 4

Methods are compared per trained sample (a CMSFed round trains the clients it selects, whose
sizes differ from FedAvg's sample; its round 1 trains every client one epoch and is left out).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from workload import CLASSES, EVAL_SAMPLES, SPECS, TRAIN_SAMPLES  # also puts the checkout on sys.path

from pipelines.artifacts import Artifact  # noqa: E402
from pipelines.engines.local import run as run_local  # noqa: E402
from pipelines.fl import TrainPool  # noqa: E402
from pipelines.fl.base import MomentumSGD  # noqa: E402
from pipelines.models import MultimodalNet  # noqa: E402
from pipelines.partitioning.dirichlet import split_dirichlet, split_iid  # noqa: E402
from pipelines.partitioning.missing import client_level_missing  # noqa: E402
from pipelines.training.config import resolve_config  # noqa: E402
from pipelines.training.data import SampleSet, TrainingData, make_clients  # noqa: E402
from pipelines.training.progress import QuietProgress  # noqa: E402
from pipelines.training.run_dir import RunDirectory  # noqa: E402
from pipelines.training.session import TrainingSession  # noqa: E402

CHUNK = 512


def rss_mb() -> float:
    """Current resident set size (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and payloads (filled chunk by chunk, so the peak is the arrays themselves)."""
    labels = rng.integers(0, len(CLASSES), n)
    inputs = {s.name: np.empty((n, *s.shape), dtype=s.dtype) for s in SPECS}
    for start in range(0, n, CHUNK):
        rows = slice(start, start + CHUNK)
        inputs["audio"][rows] = rng.standard_normal((min(CHUNK, n - start), *SPECS[0].shape), dtype=np.float32)
        inputs["visual"][rows] = rng.integers(0, 256, (min(CHUNK, n - start), *SPECS[1].shape), dtype=np.uint8)
    return labels, inputs


def pool(labels: np.ndarray, inputs: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> TrainPool:
    return TrainPool(inputs={m: torch.from_numpy(a) for m, a in inputs.items()},
                     present={m: torch.from_numpy(p) for m, p in present.items()},
                     labels=torch.from_numpy(labels.astype(np.int64)))


def build_workload(n_train: int, n_eval: int, num_clients: int, seed: int, where: Path) -> TrainingData:
    rng = np.random.default_rng(seed)
    labels, inputs = random_split(n_train, rng)
    if num_clients <= 100:
        client = split_dirichlet(labels, len(CLASSES), num_clients, 0.5, 2, seed)
    else:
        client = split_iid(n_train, num_clients, seed)
    everything = {s.name: np.ones(n_train, bool) for s in SPECS}
    available, lost = client_level_missing(client, everything, num_clients, 0.3, None, seed)
    client_modalities = {s.name: np.array([lost[c] != k for c in range(num_clients)]) for k, s in enumerate(SPECS)}
    splits = {}
    for split in ("val", "test"):
        y, x = random_split(n_eval, rng)
        splits[split] = SampleSet(np.array([f"{split}-{i}" for i in range(n_eval)]),
                                  pool(y, x, {s.name: np.ones(n_eval, bool) for s in SPECS}))
    fake = lambda kind: Artifact(kind, where / kind, {"fingerprint": f"benchmark-{kind}",  # noqa: E731
                                                      "inputs": {"dataset": "benchmark-dataset"}})
    return TrainingData(
        dataset=fake("dataset"), partition=fake("partition"), specs=SPECS, classes=CLASSES,
        train=SampleSet(np.array([f"train-{i}" for i in range(n_train)]), pool(labels, inputs, available)),
        train_client=client.astype(np.int32),
        clients=make_clients(client, client_modalities, num_clients, [s.name for s in SPECS]),
        splits=splits,
    )


class ModelClock:
    """Seconds spent in the model's forward, backward and optimizer steps (wraps them globally):
    wall-clock and process CPU time (the latter is what a busy shared machine distorts least)."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds = 0.0
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self._wrap(MultimodalNet, "forward", "forward")
        self._wrap(torch.Tensor, "backward", "backward")
        self._wrap(MomentumSGD, "step", "step")

    def _wrap(self, owner, attr: str, key: str) -> None:
        original = getattr(owner, attr)
        clock = self

        def timed(*args, **kwargs):
            clock.sync()
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                clock.sync()
                clock.seconds[key] += time.perf_counter() - start
                clock.cpu_seconds += time.process_time() - cpu

        setattr(owner, attr, timed)

    def total(self) -> float:
        return sum(self.seconds.values())


def new_files(directory: Path, seen: set) -> tuple[set, int, int]:
    """The files under ``directory`` not in ``seen`` ((name, inode, mtime) keys: an atomic
    rewrite is a new file): (all keys now, count and bytes of the new ones)."""
    now = {}
    for path in directory.rglob("*"):
        if path.is_file():
            st = path.stat()
            now[(str(path), st.st_ino, st.st_mtime_ns)] = st.st_size
    fresh = [size for key, size in now.items() if key not in seen]
    return set(now), len(fresh), sum(fresh)


class RoundTimer(QuietProgress):
    """Per round: wall time, model time, trained samples and checkpoint files written."""

    def __init__(self, clock: ModelClock, checkpoints: Path):
        self.clock, self.rows = clock, []
        self.checkpoints, self.seen = checkpoints, set()

    def round_started(self, round_, clients) -> None:
        self.start, self.model_start, self.samples = time.perf_counter(), self.clock.total(), 0
        self.cpu_start, self.model_cpu_start = time.process_time(), self.clock.cpu_seconds

    def client_finished(self, update) -> None:
        self.samples += update.num_samples

    def round_finished(self, result) -> None:
        wall = time.perf_counter() - self.start
        cpu = time.process_time() - self.cpu_start
        self.seen, files, written = new_files(self.checkpoints, self.seen)
        self.rows.append({"round": result.round, "wall": wall, "model": self.clock.total() - self.model_start,
                          "cpu": cpu, "model_cpu": self.clock.cpu_seconds - self.model_cpu_start,
                          "samples": self.samples, "evaluated": result.record is not None,
                          "clients": len(result.clients), "files": files, "written": written})


def per_sample(mean: dict, key: str) -> float:
    """Seconds per trained sample: rounds of methods that choose their clients (CMSFed) differ in
    size, so methods are compared per sample."""
    return mean[key] / max(mean["samples"], 1)


def bench_method(data: TrainingData, method: str, args, where: Path, clock: ModelClock) -> list[dict]:
    config = resolve_config({
        "method": method, "rounds": args.rounds, "clients_per_round": args.per_round, "eval_every": args.rounds,
        "device": args.device, "seed": 0,
        "model": {"encoder": args.encoder, "embed_dim": args.embed_dim},
        "train": {"local_epochs": args.local_epochs, "batch_size": args.batch_size},
    })
    session = TrainingSession(RunDirectory(where / "runs" / method), config, data, torch.device(args.device))
    session.begin()
    timer = RoundTimer(clock, session.run.path / "checkpoints")
    run_local(session, timer)
    return timer.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="fedavg,fedcmi")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per method (the last one evaluates)")
    parser.add_argument("--train", type=int, default=TRAIN_SAMPLES)
    parser.add_argument("--eval", type=int, default=EVAL_SAMPLES, help="val and test samples each")
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--local-epochs", type=int, default=1,
                        help="FedCMI's teacher pass is once per round, so more epochs amortise it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        t0 = time.perf_counter()
        rss0 = rss_mb()
        data = build_workload(args.train, args.eval, args.clients, 0, where)
        rss_data = rss_mb()
        index_bytes = sum(c.indices.nbytes for c in data.clients)
        print(f"workload: {args.train} train + 2x{args.eval} eval samples, {args.clients} clients "
              f"({args.per_round}/round), encoder {args.encoder} d={args.embed_dim}, device {args.device}, "
              f"{torch.get_num_threads()} threads; built in {time.perf_counter() - t0:.1f} s")
        print(f"memory: RSS {rss0:.0f} MB before data, {rss_data:.0f} MB with data loaded; "
              f"client index arrays {index_bytes / 1024:.1f} KB in all ({index_bytes / args.clients:.0f} B/client)")
        clock = ModelClock(torch.device(args.device))
        means = {}
        for method in args.methods.split(","):
            rows = bench_method(data, method, args, where, clock)
            train_rows = [r for r in rows[1:] if not r["evaluated"]] or rows[1:]
            mean = {k: float(np.mean([r[k] for r in train_rows])) for k in ("wall", "model", "cpu", "model_cpu", "samples")}
            means[method] = mean
            ev = rows[-1]
            print(f"{method:>8}: training round {mean['wall']:6.2f} s wall / {mean['cpu']:6.2f} s CPU "
                  f"({mean['samples'] / mean['wall']:5.1f} samples/s wall, {mean['samples'] / mean['cpu']:5.1f} per CPU-s; "
                  f"{mean['samples']:.0f} samples); outside forward/backward/step: "
                  f"{100 * (1 - mean['model'] / mean['wall']):4.1f}% of wall, {100 * (1 - mean['model_cpu'] / mean['cpu']):4.1f}% of CPU"
                  " (target < 5%)")
            print(f"          evaluated round {ev['wall']:6.2f} s wall / {ev['cpu']:6.2f} s CPU; outside the model: "
                  f"{100 * (1 - ev['model'] / ev['wall']):4.1f}% of wall, {100 * (1 - ev['model_cpu'] / ev['cpu']):4.1f}% of CPU; "
                  f"RSS now {rss_mb():.0f} MB")
            for r in rows:
                print(f"          round {r['round']}: {r['wall']:.2f} s wall ({r['model']:.2f} in the model), "
                      f"{r['cpu']:.2f} s CPU ({r['model_cpu']:.2f} in the model), {r['samples']} samples"
                      f"{' + evaluation' if r['evaluated'] else ''}; {r['clients']} clients trained, checkpoint: "
                      f"{r['files']} file(s), {r['written'] / 1e6:.2f} MB written")
        for method in sorted(set(means) - {"fedavg"}) if "fedavg" in means else []:
            print(f"{method} / fedavg training round (per sample trained): "
                  f"{per_sample(means[method], 'wall') / per_sample(means['fedavg'], 'wall'):.2f}x wall, "
                  f"{per_sample(means[method], 'cpu') / per_sample(means['fedavg'], 'cpu'):.2f}x CPU")
        print(f"peak RSS {peak_rss_mb():.0f} MB; model time by part: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in clock.seconds.items()))


if __name__ == "__main__":
    main()
