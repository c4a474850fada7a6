#!/usr/bin/env bash
# Burn-scar study, part 1: frozen vs unfrozen vs random-init encoder vs LoRA, for each encoder, then the report.
#
#   scripts/sweep_modes.sh [key=value ...]        # extra overrides go to every run
#
# Environment (defaults in brackets):
#   ENCODERS  encoder configs to compare            ["dofa prithvi croma_optical"]
#   DECODER   decoder behind every encoder          [seg_upernet]
#   SEEDS     seeds, comma-separated                [experiment=modes: 0,1,2]
#   NPROC     processes (GPUs) per run              [1]
#   DATASET   dataset config                        [hlsburnscars]
#   WORK_DIR  where run folders and the report go   [work_dir/burnscars_modes]
#   PYTHON    interpreter                           [python]
# Running it again finishes what is missing: completed runs are skipped, interrupted ones resumed.
# Extra Hydra options work too, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu.
set -uo pipefail
ENCODERS=${ENCODERS:-"dofa prithvi croma_optical"}
WORK_DIR=${WORK_DIR:-work_dir/burnscars_modes}
PYTHON=${PYTHON:-python}
status=0
for encoder in $ENCODERS; do
    "$PYTHON" -m benchmark.sweep experiment=modes "dataset=${DATASET:-hlsburnscars}" "encoder=$encoder" \
        "decoder=${DECODER:-seg_upernet}" ${SEEDS:+"seed=$SEEDS"} "nproc_per_node=${NPROC:-1}" \
        "work_dir=$WORK_DIR" "$@" || status=1  # carry on: the report lists failed runs
done
"$PYTHON" -m benchmark.report "$WORK_DIR" || status=1
exit $status
