#!/usr/bin/env bash
# The synthetic-data example of the README ("Benchmarking on HLS Burn Scars"), on a CPU in minutes:
#
#   scripts/sweep_synthetic_demo.sh [folder]      # default: work_dir/synthetic_demo
#
# 1. A tiny ViT (the ssl4eo_mae_optical architecture with 4 blocks of 64 dims, 32 px windows) is
#    trained from scratch on one synthetic scene set and saved in the SSL4EO release layout: a
#    stand-in for pretrained weights, which cannot be downloaded offline.
# 2. scripts/sweep_modes.sh and scripts/sweep_decoders.sh run with it on another synthetic scene set
#    (2 seeds, 10 epochs, decoders 64 channels wide); the report is written to <folder>/runs and
#    copied to docs/synthetic_example/.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-work_dir/synthetic_demo}
export PYTHON=${PYTHON:-python}
TINY=(
    dataset.img_size=64 dataset.num_train=40 dataset.num_test=12 encoder.input_size=32 encoder.embed_dim=64
    encoder.depth=4 encoder.num_heads=4 "encoder.output_layers=[0,1,2,3]" batch_size=8 num_workers=0
    test_num_workers=0 optimizer.lr=1e-3 task.trainer.n_epochs=10 task.trainer.eval_interval=1
)
weights=$DIR/vit_tiny_synthetic.pth
if [ ! -f "$weights" ]; then
    "$PYTHON" "$REPO/benchmark/run.py" dataset=synthetic_burnscars encoder=ssl4eo_mae_optical decoder=seg_fcn \
        mode=random "${TINY[@]}" "dataset.root_path=$DIR/pretrain_data" dataset.generator_seed=1 \
        dataset.num_train=80 task.trainer.n_epochs=15 "run_dir=$DIR/pretrain" resume=true
    "$PYTHON" -c 'import sys, torch; best = torch.load(sys.argv[1], weights_only=True)
torch.save({"model": best["model"]["encoder"]}, sys.argv[2])' "$DIR/pretrain/checkpoints/best.pt" "$weights"
fi
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
