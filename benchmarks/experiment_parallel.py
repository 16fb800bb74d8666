"""`cmi experiment run --jobs 2` against the same runs one after another (run by hand; prints
figures, asserts nothing). Targets: the parallel wall time at most the sequential one, and a
concurrent run's round at most 1.1x a lone run's round per core (round time x torch threads).

Workload: the synthetic dataset (`cmi prepare synthetic`, 480 clips by default), `cmi partition
--alpha 0.5 --missing 0.3`, then an experiment of 2 methods x 3 seeds at the CPU-quick defaults,
run twice in the same workspace under two names: ``--jobs 1`` (each run alone, with all the cores'
threads) and ``--jobs N`` (N runs at a time, cores/N threads each). Round times are the runs'
own ``time_s`` (training, aggregation and the evaluation of the round); the first round (first
calls) is left out of the means.

    python benchmarks/experiment_parallel.py                         # fedavg,fedcmi x 0,1,2, --jobs 2
    python benchmarks/experiment_parallel.py --rounds 1 --clips 120 --clients 6    # a quick check
    python benchmarks/experiment_parallel.py --methods fedavg,fedprox --seeds 0,1 --jobs 2 --keep ws
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cmi(workspace: Path, *args: str) -> float:
    """Run ``cmi ARGS`` in ``workspace`` quietly; return its wall time in seconds."""
    env = {**os.environ, "CMI_WORKSPACE": str(workspace), "PYTHONPATH": str(ROOT)}
    env.pop("CMI_THREADS", None)   # the experiment splits the cores itself
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cmi_cli", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def round_stats(workspace: Path, experiment: str) -> tuple[list[float], int]:
    """Round times (first round of each run left out, unless a run has only one) and the torch
    threads of the runs of ``experiment``."""
    manifest = json.loads((workspace / "experiments" / experiment / "manifest.json").read_text())
    times, threads = [], set()
    for cell in manifest["params"]["cells"]:
        run = workspace / "runs" / cell["run"]
        threads.add(json.loads((run / "manifest.json").read_text())["threads"])
        rounds = [json.loads(line)["time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        times += rounds[1:] or rounds
    (only,) = threads
    return times, only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="fedavg,fedcmi")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the config's)")
    parser.add_argument("--clips", type=int, default=480, help="synthetic clips (cmi prepare synthetic --clips)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--keep", type=Path, default=None, help="workspace to use and keep (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cmi-bench-") as tmp:
        ws = (args.keep or Path(tmp) / "ws").resolve()
        cmi(ws, "prepare", "synthetic", "--clips", str(args.clips), "--quiet")
        cmi(ws, "partition", "--alpha", "0.5", "--missing", "0.3", "--clients", str(args.clients), "--quiet")
        common = [f"--method={m}" for m in args.methods.split(",")] + ["--seeds", args.seeds, "--quiet"]
        if args.rounds:
            common += ["--rounds", str(args.rounds)]
        walls, stats = {}, {}
        for name, jobs in (("sequential", 1), ("parallel", args.jobs)):
            walls[name] = cmi(ws, "experiment", "run", "--name", f"bench-{name}", "--jobs", str(jobs), *common)
            stats[name] = round_stats(ws, f"bench-{name}")

    runs = len(args.methods.split(",")) * len(args.seeds.split(","))
    print(f"{runs} runs ({args.methods} x seeds {args.seeds}), {os.cpu_count()} CPU(s), "
          f"{len(os.sched_getaffinity(0))} available")
    for name in ("sequential", "parallel"):
        times, threads = stats[name]
        mean = statistics.fmean(times)
        print(f"{name:>10}: wall {walls[name]:7.1f} s   round {mean:6.2f} s on {threads} thread(s) "
              f"= {mean * threads:6.2f} core-s per round   ({len(times)} rounds)")
    lone = statistics.fmean(stats["sequential"][0]) * stats["sequential"][1]
    together = statistics.fmean(stats["parallel"][0]) * stats["parallel"][1]
    print(f"parallel / sequential wall time: {walls['parallel'] / walls['sequential']:.2f} (target <= 1.00)")
    print(f"concurrent / lone round per core: {together / lone:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
