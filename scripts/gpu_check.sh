#!/usr/bin/env bash
# The CUDA path on one GPU, end to end, and the figures of the README's GPU section:
#
#   bash scripts/gpu_check.sh [output folder]      # default: gpu_check/
#
# 1. environment: GPU, driver, torch, CUDA, NCCL, bf16 support;
# 2. the quickstart under torchrun on CUDA inside a one-member NCCL group (scripts/one_rank_ddp.py:
#    DistributedDataParallel, SyncBatchNorm and the collectives), bf16 autocast, channels_last decoder,
#    fused AdamW; it must learn (test mIoU above the majority class's);
# 3. the saved run tested again (test ckpt_dir=...) and one scene mapped (bf16 windows);
# 4. training images/s of a ViT-B/16 + UPerNet at 224 px, frozen and unfrozen, fp32 vs bf16 vs bf16 +
#    torch.compile vs bf16 with the training split on the GPU (scripts/benchmark_speed.py);
# 5. the training loader alone on the same data, 0 and 8 workers and the split held on the GPU
#    (scripts/loader_speed.py): can it feed them?
# Each step's log goes to the output folder; the script goes on after a failed step and exits 1 at the end.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=$(mkdir -p "${1:-gpu_check}" && cd "${1:-gpu_check}" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
SPEED_DATA=(dataset.num_train=${SPEED_TRAIN_SCENES:-1000} dataset.num_test=40)  # 900 training tiles: 28 batches
read -r -a SPEED_EXTRA <<<"${SPEED_OVERRIDES:-}"  # more overrides for the speed runs (a CPU dry run: a smaller model)
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the script without a GPU (gloo)
BACKEND=$([ "$DEVICE" = cuda ] && echo nccl || echo gloo)
failed=()
mkdir -p "$WORK"
cd "$REPO"

step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, show its end
    local name=$1 started=$SECONDS
    shift
    echo "=== $name"
    "$@" >"$OUTDIR/$name.log" 2>&1
    local status=$?
    grep -v -e '^\s*$' -e 'it/s' -e 's/it' "$OUTDIR/$name.log" | tail -n "${TAIL:-15}"
    echo "=== $name: exit $status after $((SECONDS - started)) s"
    [ "$status" -eq 0 ] || failed+=("$name")
}

environment() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || [ "$DEVICE" = cpu ]
    "$PYTHON" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "NCCL", ".".join(map(str, torch.cuda.nccl.version())))
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported(), "devices", torch.cuda.device_count())
EOF
}

quickstart_ddp() {
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 scripts/one_rank_ddp.py experiment=quickstart \
        "device=$DEVICE" "dataset.root_path=$WORK/quickstart_data" "run_dir=$WORK/quickstart_run" \
        2>&1 | tee "$WORK/quickstart_ddp.out" || return
    grep "one-member $BACKEND process group" "$WORK/quickstart_ddp.out" || { echo "no $BACKEND group"; return 1; }
    "$PYTHON" - "$WORK/quickstart_run" <<'EOF'
import json, sys
from pathlib import Path
from benchmark.report.stats import majority_miou
results = json.loads((Path(sys.argv[1]) / "results.json").read_text())
test, cost = results["test"], results["cost"]
majority = majority_miou([sum(row) for row in test["confusion_matrix"]])
print(f"test mIoU {test['mIoU']:.4f} (majority class {majority:.4f}), IoU {test['IoU']}")
print(f"train img/s {cost['train_images_per_s']:.0f}, peak memory {cost['peak_memory_mb']:.0f} MB")
assert results["status"] == "completed" and test["mIoU"] > majority + 0.1, "did not learn"
EOF
}

test_and_predict() {
    "$PYTHON" benchmark/run.py --config-name=test "ckpt_dir=$WORK/quickstart_run" || return
    "$PYTHON" benchmark/run.py --config-name=predict "ckpt_dir=$WORK/quickstart_run" \
        "inputs=$(ls "$WORK"/quickstart_data/validation/*merged.tif | head -n 1)" "output_dir=$WORK/maps" \
        "bands=[B2,B3,B4,B8A,B11,B12]" probabilities=true || return
    ls -la "$WORK/maps"
    cat "$WORK"/maps/*.json
}

speed() {  # speed MODE
    "$PYTHON" scripts/benchmark_speed.py --random-weights --output "$WORK/speed_$1" \
        --variants "task.trainer.precision=fp32" "task.trainer.precision=bf16" \
        "task.trainer.precision=bf16 task.trainer.compile=true" "task.trainer.precision=bf16 data_on_device=true" \
        --decoders seg_upernet -- "mode=$1" cache=false dataset=synthetic_burnscars \
        "dataset.root_path=$WORK/speed_data" dataset.img_size=224 "${SPEED_DATA[@]}" \
        encoder=ssl4eo_mae_optical encoder.embed_dim=768 encoder.num_heads=12 \
        "encoder.encoder_weights=$WORK/ssl4eo_mae_vitb_random.pth" batch_size=32 num_workers=8 test_num_workers=4 \
        task.trainer.n_epochs=3 task.trainer.eval_interval=3 "${SPEED_EXTRA[@]}"
}

loader() {  # the training loader alone on the speed data: can it feed the rates above?
    "$PYTHON" scripts/loader_speed.py --workers 0 8 --epochs 2 --resident --device cuda -- cache=false dataset=synthetic_burnscars \
        "dataset.root_path=$WORK/speed_data" dataset.img_size=224 "${SPEED_DATA[@]}" encoder=ssl4eo_mae_optical \
        batch_size=32
}

step environment environment
step quickstart_ddp quickstart_ddp
TAIL=8 step test_and_predict test_and_predict
TAIL=30 step speed_frozen speed frozen
TAIL=30 step speed_unfrozen speed unfrozen
TAIL=8 step loader loader
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all steps passed; logs in $OUTDIR"
