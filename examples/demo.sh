#!/usr/bin/env bash
# The whole cmi pipeline on the built-in synthetic dataset (CREMA-D layout, no download), in its
# realistic setting: every actor has its own voice and face nuisance and the test actors are
# unseen, so the weak (visual) modality is weak because it generalises badly, as on real data.
# prepare -> partition -> train FedAvg and FedCMI -> per-class report and an HTML comparison.
# Usage: bash examples/demo.sh   (workspace: $CMI_WORKSPACE, default ./cmi-workspace)
set -euo pipefail
export CMI_WORKSPACE="${CMI_WORKSPACE:-cmi-workspace}"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step cmi prepare synthetic --shift 1 --imbalance 0.2 --clips 720 --split actor
step cmi partition --alpha 0.5 --missing 0.3
step cmi train --method fedavg --name demo-fedavg
step cmi train --name demo-fedcmi
step cmi report --per-class
step cmi report --compare demo-fedavg demo-fedcmi --snapshot best --path fused --path visual_only --path visual_self
step cmi report --compare demo-fedavg demo-fedcmi --format html

echo
echo "Open $CMI_WORKSPACE/runs/demo-fedavg/compare-demo-fedcmi.html for the side-by-side report with figures."
