#!/usr/bin/env bash
# The synthetic-data example of the README ("Benchmarking on HLS Burn Scars"), on a CPU in minutes:
#
#   scripts/sweep_synthetic_demo.sh [folder]      # default: work_dir/synthetic_demo
#
# 1. A tiny ViT is trained from scratch on one synthetic scene set as a stand-in for pretrained
#    weights (scripts/synthetic_common.sh).
# 2. scripts/sweep_modes.sh and scripts/sweep_decoders.sh run with it on another synthetic scene set
#    (2 seeds, 10 epochs, decoders 64 channels wide); the report is written to <folder>/runs and
#    copied to docs/synthetic_example/.
# shellcheck source=scripts/synthetic_common.sh
source "$(dirname "$0")/synthetic_common.sh" "${1:-}"
export DATASET=synthetic_burnscars ENCODERS=ssl4eo_mae_optical SEEDS=0,1 WORK_DIR=$DIR/runs
SWEEP=("${TINY[@]}" "dataset.root_path=$DIR/data" "encoder.encoder_weights=$weights")
"$REPO/scripts/sweep_modes.sh" "${SWEEP[@]}" decoder.channels=64
DECODERS=seg_linear "$REPO/scripts/sweep_decoders.sh" "${SWEEP[@]}"  # a linear probe has no width
DECODERS=seg_fcn,seg_upernet,seg_segformer,seg_muster "$REPO/scripts/sweep_decoders.sh" "${SWEEP[@]}" decoder.channels=64
out=$REPO/docs/synthetic_example
mkdir -p "$out"
{
    echo "> Produced by scripts/sweep_synthetic_demo.sh: **synthetic data, tiny models, CPU** (not HLS Burn Scars results)."
    echo
    cat "$WORK_DIR/leaderboard.md"
} > "$out/leaderboard.md"
cp "$WORK_DIR/miou_by_decoder_mode.png" "$WORK_DIR/val_miou_curves.png" "$out/"
