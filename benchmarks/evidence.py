"""Evidence for (or against) a method: variants × seeds on a prepared dataset, mean ± std per
path and the paired per-seed differences against a baseline (run by hand; prints, asserts
nothing).

For every seed s a partition is made with ``--seed s`` (Dirichlet ``--alpha``, ``--missing``,
``--clients``) and every variant is trained on it with ``--seed s``, as ordinary `cmi train` runs
in the workspace (finished runs are reused, so the script resumes and a larger grid reuses a
smaller one). A variant is ``NAME=METHOD`` or ``NAME=METHOD:KEY=VALUE,KEY=VALUE`` (any
`cmi train --set` key). Accuracies are those of the model best on validation (``--snapshot
best``, the run's best round) or of the last round (``final``); the paired differences are
variant − baseline on the same seed and partition.

    # the README's evidence table: shift-synthetic, 5 seeds, FedAvg/FedProx/FedCMI and its ablations
    python benchmarks/evidence.py --workspace /tmp/evidence
    # any prepared dataset of a workspace
    python benchmarks/evidence.py --workspace ~/cmi-workspace --dataset cremad --seeds 0 1 2
    # a sensitivity sweep
    python benchmarks/evidence.py --workspace /tmp/evidence --variants fedavg=fedavg \\
        mu0.05=fedcmi:fedcmi.mu=0.05 mu0.2=fedcmi:fedcmi.mu=0.2

Without ``--dataset`` the shift-synthetic dataset is prepared first
(``cmi prepare synthetic --shift 1 --imbalance 0.2 --clips 720 --split actor``, see the README).
``--jobs`` runs that many trainings at once, each on ``--threads`` torch threads (keep
jobs × threads ≤ cores). Results also go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_VARIANTS = [
    "fedavg=fedavg",
    "fedprox=fedprox",
    "fedcmi=fedcmi",
    "fedcmi-no-infiltration=fedcmi:fedcmi.infiltration=false",
    "fedcmi-no-proximal=fedcmi:fedcmi.proximal=false",
]
SHIFT_SYNTHETIC = ["synthetic", "--shift", "1", "--imbalance", "0.2", "--clips", "720", "--split", "actor"]


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    name, _, spec = text.partition("=")
    method, _, sets = spec.partition(":")
    if not name or not method:
        raise SystemExit(f"variant {text!r}: write NAME=METHOD or NAME=METHOD:KEY=VALUE,...")
    return name, method, [s for s in sets.split(",") if s]


def cmi(workspace: Path, *args: str, threads: int = 1) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CMI_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-m", "cmi_cli", "--workspace", str(workspace), *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cmi {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def run_status(workspace: Path, name: str) -> str | None:
    manifest = workspace / "runs" / name / "manifest.json"
    return json.loads(manifest.read_text())["status"] if manifest.is_file() else None


def accuracies(workspace: Path, name: str, snapshot: str) -> dict[str, float]:
    run = workspace / "runs" / name
    manifest = json.loads((run / "manifest.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wanted = manifest["best_round"] if snapshot == "best" else lines[-1]["round"]
    line = next(entry for entry in lines if entry["round"] == wanted)
    return dict(line["test"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--dataset", help="a prepared dataset of the workspace (default: prepare shift-synthetic)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--baseline", default=None, help="variant the others are paired with (default: the first)")
    parser.add_argument("--alpha", default="0.5")
    parser.add_argument("--missing", default="0.3")
    parser.add_argument("--clients", default="20")
    parser.add_argument("--snapshot", choices=["best", "final"], default="best")
    parser.add_argument("--train-args", default="", help="extra `cmi train` arguments for every run, e.g. '--rounds 40'")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: <workspace>/evidence-<dataset>.json)")
    args = parser.parse_args()

    ws = args.workspace
    dataset = args.dataset
    if dataset is None:
        dataset = "shift-synthetic"
        if not (ws / "datasets" / dataset / "manifest.json").is_file():
            print("preparing the shift-synthetic dataset ...", flush=True)
            cmi(ws, "prepare", *SHIFT_SYNTHETIC, "--name", dataset, "--quiet", threads=args.threads)
    variants = [parse_variant(v) for v in args.variants]
    baseline = args.baseline or variants[0][0]
    tag = f"{dataset}-a{args.alpha}-m{args.missing}-c{args.clients}"

    cells = []
    for seed in args.seeds:
        partition = f"{tag}-s{seed}"
        if not (ws / "partitions" / partition / "manifest.json").is_file():
            cmi(ws, "partition", "--dataset", dataset, "--alpha", args.alpha, "--missing", args.missing,
                "--clients", args.clients, "--seed", str(seed), "--name", partition, "--quiet")
        for name, method, sets in variants:
            run = f"{name}-{partition}"
            cells.append((run, ["train", "--partition", partition, "--method", method, "--seed", str(seed),
                                "--name", run, "--quiet", *args.train_args.split(),
                                *[a for s in sets for a in ("--set", s)]]))

    def train(cell: tuple[str, list[str]]) -> None:
        run, command = cell
        if run_status(ws, run) in ("complete", "diverged"):
            return
        try:
            cmi(ws, *command, threads=args.threads)  # the same command continues an interrupted run
        except RuntimeError as exc:
            if run_status(ws, run) != "diverged":
                raise
            print(f"  DIVERGED {run}: {str(exc).splitlines()[-4].strip()}", flush=True)
            return
        print(f"  done {run}", flush=True)

    todo = [c for c in cells if run_status(ws, c[0]) not in ("complete", "diverged")]
    print(f"{len(cells)} runs, {len(todo)} to train ({args.jobs} at a time, {args.threads} thread(s) each)", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(train, todo))

    # a diverged run (NaN loss: the run stops, see `cmi train`) has no result: its seed is left out
    # of that variant's mean and of its paired differences, and the table says so
    results = {name: {seed: accuracies(ws, f"{name}-{tag}-s{seed}", args.snapshot) for seed in args.seeds
                      if run_status(ws, f"{name}-{tag}-s{seed}") == "complete"}
               for name, _, _ in variants}
    paths = list(next(iter(results[baseline].values())))
    print(f"\n{dataset}: test accuracy (%) of the {args.snapshot} model, mean ± std over seeds {args.seeds}")
    print(f"{'variant':28s}" + "".join(f"{p:>16s}" for p in paths))
    for name in results:
        row = [100 * np.array([results[name][s][p] for s in results[name]]) for p in paths]
        missing = [s for s in args.seeds if s not in results[name]]
        note = f"   (diverged: seeds {missing})" if missing else ""
        print(f"{name:28s}" + "".join(f"{v.mean():9.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:4.1f}" for v in row)
              + note)
    print(f"\npaired differences against {baseline} (points; per seed, then mean)")
    for name in results:
        if name == baseline:
            continue
        cells_text = []
        both = [s for s in args.seeds if s in results[name] and s in results[baseline]]
        for p in paths:
            diff = [100 * (results[name][s][p] - results[baseline][s][p]) for s in both]
            wins = sum(d > 0 for d in diff)
            cells_text.append(f"{p}: {' '.join(f'{d:+.1f}' for d in diff)} → {np.mean(diff):+.1f} ({wins}/{len(diff)} up)")
        print(f"  {name}:\n    " + "\n    ".join(cells_text))
    out = args.out or ws / f"evidence-{tag}-{args.snapshot}.json"
    out.write_text(json.dumps({"dataset": dataset, "tag": tag, "snapshot": args.snapshot, "seeds": args.seeds,
                               "variants": args.variants, "accuracy": results,
                               "diverged": {name: [s for s in args.seeds if s not in results[name]]
                                            for name in results}}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
