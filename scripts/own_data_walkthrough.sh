#!/usr/bin/env bash
# The README's "Your own data" walk-through, end to end, with the wall time of every step (bash's `time`).
#
#   bash scripts/own_data_walkthrough.sh WORKDIR          # from the repository root, `spectralmoe` on PATH
#
# Writes WORKDIR/{own-data,prepared,runs,maps,compare} and prints one "seconds: command" line per step,
# then the total. SYNTHETIC stand-in data (scripts/own_data_example.py): it times the workflow only.
# The README's numbers were taken with OMP_NUM_THREADS=1 on a shared 2-core machine; the training and
# evaluation commands run with --data.num_workers 0 for the same reason (set WORKERS to change it).
set -euo pipefail
work=${1:?usage: bash scripts/own_data_walkthrough.sh WORKDIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
workers=${WORKERS:-0}
mkdir -p "$work" && cd "$work"
rm -rf own-data prepared runs maps compare
TIMEFORMAT='%R'
total=0
step() {
  local seconds
  count=$((count + 1))
  seconds=$( { time "$@" > "step-$count.log" 2>&1; } 2>&1 )
  total=$(python3 -c "print(round($total + $seconds, 1))")
  echo "$seconds s: $*"
}
count=0
common=(--trainer.enable_progress_bar false --data.num_workers "$workers")
step python "$repo/scripts/own_data_example.py" --out own-data
step spectralmoe prepare folder \
  --images own-data/siteA/images --labels own-data/siteA/labels \
  --images own-data/siteB/images --labels own-data/siteB/labels --wavelengths 0.83 0.665 0.56 0.49 \
  --classes own-data/classes.txt --label-offset 1 --holdout 0.2 --out prepared
step spectralmoe fit -c prepared/fit.yaml -c "$repo/configs/methods/spectralmoe_synthetic.yaml" "${common[@]}"
step spectralmoe fit -c prepared/fit.yaml -c "$repo/configs/methods/freeze_synthetic.yaml" "${common[@]}"
for method in spectralmoe freeze; do
  run=runs/prepared/${method}_synthetic-dinov2/version_0
  step spectralmoe test -c "$run/config.yaml" --ckpt_path "$run/checkpoints/last.ckpt" "${common[@]}"
  step spectralmoe predict -c "$run/config.yaml" --ckpt_path "$run/checkpoints/last.ckpt" "${common[@]}"
done
run=runs/prepared/spectralmoe_synthetic-dinov2/version_0
step spectralmoe predict-scene --checkpoint "$run" --input own-data/scene_siteB.tif --output maps/scene_siteB.tif \
  --ground-truth own-data/scene_siteB_truth.tif --tile 128 --overlap 32 --quiet
step spectralmoe compare runs/prepared/spectralmoe_synthetic-dinov2 runs/prepared/freeze_synthetic-dinov2 \
  --output compare
echo "total: $total s (load average now: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"
cat compare/compare.md
tail -n 14 "step-$((count - 1)).log"  # predict-scene's summary
