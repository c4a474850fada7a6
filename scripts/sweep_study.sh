#!/usr/bin/env bash
# The whole burn-scar study: fine-tuning modes x decoders x label fractions x seeds for each encoder, the
# from-scratch U-Net baseline on the same label fractions and seeds, then the report (intervals, IQM,
# normalised scores, mIoU against label fraction).
#
#   scripts/sweep_study.sh [key=value ...]        # extra overrides go to every run
#
# Environment (defaults in brackets):
#   ENCODERS       encoder configs to compare                    ["prithvi dofa croma_optical ssl4eo_mae_optical"]
#   DECODERS       decoders, comma-separated                     [seg_upernet]
#   MODES          modes, comma-separated                        [frozen,partial,progressive,lora,unfrozen,random]
#   FRACTIONS      label fractions, comma-separated              [0.01,0.1,0.5,1.0]
#   SEEDS          seeds, comma-separated                        [0,1,2]
#   BASELINE       the scratch baseline: encoder=unet decoder=seg_unet (empty: none)  [unet]
#   ENCODER_ARGS   overrides for the encoder runs only           []
#   BASELINE_ARGS  overrides for the baseline runs only          []
#   NPROC          processes (GPUs) per run                      [1]
#   DATASET        dataset config                                [hlsburnscars]
#   WORK_DIR       where run folders and the report go           [work_dir/burnscars_study]
#   PYTHON         interpreter                                   [python]
# 1 % of HLS Burn Scars is 5 tiles: those runs stop at start-up unless batch_size x NPROC <= 5 (e.g. pass
# batch_size=4 in ENCODER_ARGS and BASELINE_ARGS, or leave 0.01 out of FRACTIONS).
# Running it again finishes what is missing: completed runs are skipped, interrupted ones resumed.
set -uo pipefail
ENCODERS=${ENCODERS:-"prithvi dofa croma_optical ssl4eo_mae_optical"}
WORK_DIR=${WORK_DIR:-work_dir/burnscars_study}
PYTHON=${PYTHON:-python}
read -r -a encoder_args <<< "${ENCODER_ARGS:-}"
read -r -a baseline_args <<< "${BASELINE_ARGS:-}"
common=("dataset=${DATASET:-hlsburnscars}" "dataset.train_fraction=${FRACTIONS:-0.01,0.1,0.5,1.0}"
        "seed=${SEEDS:-0,1,2}" "nproc_per_node=${NPROC:-1}" "work_dir=$WORK_DIR" resume=true)
status=0
for encoder in $ENCODERS; do
    "$PYTHON" -m benchmark.sweep "${common[@]}" "encoder=$encoder" "decoder=${DECODERS:-seg_upernet}" \
        "mode=${MODES:-frozen,partial,progressive,lora,unfrozen,random}" "${encoder_args[@]}" "$@" \
        || status=1  # carry on: the report lists failed runs
done
if [ "${BASELINE-unet}" = unet ]; then
    "$PYTHON" -m benchmark.sweep "${common[@]}" encoder=unet decoder=seg_unet mode=random "${baseline_args[@]}" "$@" \
        || status=1
fi
"$PYTHON" -m benchmark.report "$WORK_DIR" || status=1
exit $status
