"""Partitioning at scale, in memory: 10 million samples, 100 classes, 1,000 clients, capped Dirichlet
split with client-level missing modalities, plus the statistics. Target: under 10 s and under 2 GB
peak memory.

    python benchmarks/partition_scale.py [--samples N] [--classes C] [--clients K] [--alpha A] [--missing P]

Prints the wall time of each step, the CPU time, the peak traced allocation (tracemalloc, which numpy reports to)
and the process's peak resident set size (resource.getrusage), which includes the interpreter and
libraries.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np

from pipelines.partitioning import PartitionSettings, partition_samples
from pipelines.partitioning.statistics import partition_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--missing", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data_rng = np.random.default_rng(12345)
    labels = data_rng.integers(args.classes, size=args.samples).astype(np.int32)
    present = {"audio": np.ones(args.samples, dtype=bool), "visual": np.ones(args.samples, dtype=bool)}
    settings = PartitionSettings.from_options(
        alpha=args.alpha, clients=args.clients, missing=args.missing, seed=args.seed
    )
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = partition_samples(labels, present, args.classes, settings)
    split_s = time.perf_counter() - start
    stats = partition_statistics(result.client, labels[result.kept], result.available, result.num_clients, args.classes)
    total_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    het = stats["heterogeneity"]
    print(f"samples {args.samples:,}  classes {args.classes}  clients {args.clients}  alpha {args.alpha:g}  "
          f"missing {args.missing:g} (client level)  seed {args.seed}")
    print(f"split + missingness   {split_s:7.2f} s")
    print(f"with statistics       {total_s:7.2f} s   (target < 10 s)")
    print(f"CPU time              {cpu_s:7.2f} s   (wall time exceeds it when other processes share the cores)")
    print(f"peak traced memory    {traced_peak / 2**30:7.2f} GiB (tracemalloc, partitioning only)")
    print(f"peak RSS              {peak_rss / 2**20:7.2f} GiB (whole process, incl. the 10M-sample inputs "
          f"{(labels.nbytes + sum(m.nbytes for m in present.values())) / 2**30:.2f} GiB; "
          f"before partitioning {baseline_rss / 2**20:.2f} GiB)   (target < 2 GB)")
    print(f"client sizes          min {stats['sizes']['min']}  median {stats['sizes']['median']:g}  "
          f"max {stats['sizes']['max']}")
    print(f"heterogeneity         mean TV {het['mean_tv_distance']:.3f}  mean JS {het['mean_js_distance']:.3f}  "
          f"mean effective classes {het['mean_effective_classes']:.1f}")
    print(f"clients missing one   {result.missing['clients']} of {result.num_clients}")
    ok = total_s < 10 and peak_rss * 1024 < 2 * 10**9
    print("PASS" if ok else "MISS")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
