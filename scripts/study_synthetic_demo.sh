#!/usr/bin/env bash
# The example study of the README ("The complete study"), on synthetic data and a CPU (about half an hour):
#
#   scripts/study_synthetic_demo.sh [folder]      # default: work_dir/synthetic_demo (shares its stand-in weights)
#
# scripts/sweep_study.sh with the tiny ViT of scripts/synthetic_common.sh: the six modes x UperNet x label
# fractions 25 / 50 / 100 % x 3 seeds, and a slim scratch U-Net on the same fractions and seeds. The report
# is written to <folder>/study and copied to docs/synthetic_study/.
# shellcheck source=scripts/synthetic_common.sh
source "$(dirname "$0")/synthetic_common.sh" "${1:-}"
export DATASET=synthetic_burnscars ENCODERS=ssl4eo_mae_optical DECODERS=seg_upernet FRACTIONS=0.25,0.5,1.0 \
    SEEDS=0,1,2 WORK_DIR=$DIR/study
export ENCODER_ARGS="${TINY_VIT[*]} encoder.encoder_weights=$weights decoder.channels=64"
export BASELINE_ARGS="encoder.topology=[16,32,64,64]"
"$REPO/scripts/sweep_study.sh" "${TINY_RUN[@]}" "dataset.root_path=$DIR/data"
out=$REPO/docs/synthetic_study
mkdir -p "$out"
{
    echo "> Produced by scripts/study_synthetic_demo.sh: **synthetic data, tiny models, CPU** (not HLS Burn Scars results)."
    echo
    cat "$WORK_DIR/leaderboard.md"
} > "$out/leaderboard.md"
cp "$WORK_DIR"/*.png "$out/"
