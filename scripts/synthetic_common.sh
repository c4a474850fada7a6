# Sourced by the synthetic demos (scripts/sweep_synthetic_demo.sh, scripts/study_synthetic_demo.sh) with the
# demo folder as argument: sets REPO, DIR, PYTHON, the tiny settings they share, and `weights`, the stand-in
# "pretrained" encoder they start from.
#
# TINY_RUN: 64 px synthetic tiles and short training; TINY_VIT: a 4-block 64-dim ViT on 32 px windows;
#   TINY: both. A run takes seconds per epoch on a CPU.
# synthetic_weights DIR: a tiny ViT (the ssl4eo_mae_optical architecture) trained from scratch on one
#   synthetic scene set and saved in the SSL4EO release layout as DIR/vit_tiny_synthetic.pth: a stand-in
#   for pretrained weights, which cannot be downloaded offline. Made once; prints its path.
TINY_RUN=(
    dataset.img_size=64 dataset.num_train=40 dataset.num_test=12 batch_size=8 num_workers=0 test_num_workers=0
    optimizer.lr=1e-3 task.trainer.n_epochs=10 task.trainer.eval_interval=1
)
TINY_VIT=(encoder.input_size=32 encoder.embed_dim=64 encoder.depth=4 encoder.num_heads=4 "encoder.output_layers=[0,1,2,3]")
TINY=("${TINY_RUN[@]}" "${TINY_VIT[@]}")
synthetic_weights() {
    local dir=$1 weights=$1/vit_tiny_synthetic.pth
    if [ ! -f "$weights" ]; then
        "$PYTHON" "$REPO/benchmark/run.py" dataset=synthetic_burnscars encoder=ssl4eo_mae_optical decoder=seg_fcn \
            mode=random "${TINY[@]}" "dataset.root_path=$dir/pretrain_data" dataset.generator_seed=1 \
            dataset.num_train=80 task.trainer.n_epochs=15 "run_dir=$dir/pretrain" resume=true >&2
        "$PYTHON" -c 'import sys, torch; best = torch.load(sys.argv[1], weights_only=True)
torch.save({"model": best["model"]["encoder"]}, sys.argv[2])' "$dir/pretrain/checkpoints/best.pt" "$weights"
    fi
    echo "$weights"
}

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-work_dir/synthetic_demo}  # "" also means the default
export PYTHON=${PYTHON:-python}
weights=$(synthetic_weights "$DIR")
