#!/bin/bash
# The GPU measurements still open (docs/benchmarks.md, "To measure on a GPU"), for a machine with one H100/H200
# and torch, from the repo root. Figures and logs go to $OUT (default gpu-out/).
#   measure_gpu.sh stash   keep the .gpu/dali/part.* this call carried in /tmp/dali (the parts come one per call)
#   measure_gpu.sh model   the Ne-Att CUDA tests; the augmentation at batch 64; bench_model (ViT-B/16, bf16, batch 64)
#                          of this tree, then of each baseline tree .gpu/base* (git archive REV neatt tools) that the
#                          call carried; prof_step.py, the compiled step's kernels
#   measure_gpu.sh kernel  the fused kernels alone (kernel_ab.py): this tree with its launch settings and with three
#                          others, and each .gpu/base* tree; two rounds, alternating
#   measure_gpu.sh dali    unpack the stashed DALI (docs/device/pack_dali.sh) beside torch, install its wheels;
#                          DALI's CUDA test; bench_loader, torch vs dali decoding to the GPU; dali_probe.py
#   measure_gpu.sh train [BACKEND]   the trainer on the GPU: torchrun (NCCL), bf16, torch.compile, the demo preset
#                          for 3 epochs on the digits (converted for DALI, which the torch backend reads too)
#   measure_gpu.sh ffcv    unpack docs/device/pack_ffcv.sh's FFCV; its loader tests; bench_loader, torch vs ffcv
#                          decoding to the GPU
#   measure_gpu.sh train-photos [BACKEND]   the vitb16_300ep recipe for 2 short epochs on the photos: the
#                          step's img/s and data stall with --aa v0 and erasing (BACKEND ffcv: after `ffcv`)
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { tee -a "$OUT/$1"; }
torch_site() { python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))'; }
# where the unpacked nvJPEG and nvImageCodec live, in case DALI's own search does not look there
dali_libs() { export LD_LIBRARY_PATH="$1/nvidia/cu13/lib:$1/nvidia/nvimgcodec:${LD_LIBRARY_PATH:-}"; }
# FFCV from docs/device/pack_ffcv.sh: unpacked into /tmp/ffcv once, then on the paths of this shell
ffcv_env() {
    if [ ! -d /tmp/ffcv/site ]; then
        mkdir -p /tmp/ffcv && tar -xJf .gpu/ffcv/ffcv.tar.xz -C /tmp/ffcv || return 1
    fi
    cp /tmp/ffcv/ext/_jpeg_window.cpython-312-*.so pipelines/
    export PYTHONPATH="/tmp/ffcv/site:${PYTHONPATH:-}" LD_LIBRARY_PATH="/tmp/ffcv/lib:${LD_LIBRARY_PATH:-}"
    python3 -c 'import distutils.log' 2>/dev/null || export PYTHONPATH="/tmp/ffcv/distutils_stub:$PYTHONPATH"
}
# the 4,000 ImageNet-like photos that dali, ffcv and train-photos read: built once per machine, in every format
# this machine reads (FFCV's too once `ffcv` has unpacked it); prints the dataset dir
photos() {
    local formats=dali
    [ -d /tmp/ffcv/site ] && formats=ffcv,dali
    if ! python3 -c 'import json, sys
sys.exit(not set(sys.argv[1].split(",")) <= set(json.load(open(sys.argv[2]))["formats"]))' \
            "$formats" /tmp/photos/out/folder/manifest.json 2>/dev/null; then
        python3 -c 'import sys; sys.path[:0] = ["tools", "."]
import bench_loader; bench_loader.make_photos("/tmp/photos", 4000, sys.argv[1])' "$formats" >> "$OUT/photos.txt" 2>&1 \
            || return 1
    fi
    echo /tmp/photos/out/folder
}

case "${1:-}" in
stash)
    mkdir -p /tmp/dali && cp -v .gpu/dali/part.* /tmp/dali/
    ;;
model)
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | log device.txt
    python3 -c 'import torch, triton, timm; print(torch.__version__, triton.__version__, timm.__version__)' | log device.txt
    # the CUDA tests only (the interpreted kernel run and the CPU tests are CI's)
    python3 -m pytest -q -p no:cacheprovider tests/test_mix_softmax_triton.py tests/test_augment.py tests/test_mixup.py \
        tests/test_train.py -k 'not interpreter and (cuda or test_mix_softmax_triton.py)' 2>&1 | log pytest_model.txt
    # the recipe's augmentation (v0, erasing 0.5) at its per-GPU batch of 64: GPU time the train step spends on it
    python3 tools/bench_augment.py --device cuda --batch-size 64 --images 512 --rounds 3 --reprob 0.5 \
        --json "$OUT/bench_augment_b64.json" 2>&1 | log bench_augment_b64.txt
    for tree in . .gpu/base*; do
        [ -f "$tree/tools/bench_model.py" ] || continue
        name=$([ "$tree" = . ] && echo head || basename "$tree")
        python3 "$tree/tools/bench_model.py" --device cuda --amp bf16 --repeats 20 \
            --json "$OUT/bench_model_$name.json" 2>&1 | log "bench_model_$name.txt"
    done
    # where the compiled step's time goes, kernel by kernel, Ne-Att against vanilla (ViT-B/16, bf16, batch 64)
    python3 docs/device/prof_step.py --json "$OUT/prof_step.json" 2>&1 | log prof_step.txt
    ;;
kernel)
    for round in 1 2; do
        for tree in . .gpu/base*; do
            [ -d "$tree/neatt" ] || continue
            name=$([ "$tree" = . ] && echo head || basename "$tree")
            python3 docs/device/kernel_ab.py "$tree" --json "$OUT/kernel_${name}_$round.json" 2>&1 | log kernel_ab.txt
        done
        # settings with fewer sm_90 instructions per position than the committed ones (docs/benchmarks.md,
        # 2026-11-28, seventeenth and eighteenth sessions): the mix forward at 64 and 128 positions and 4 warps
        # (43.4 and 40.9 against 53.8, its dots on wgmma), the attention backward at 8 warps (147 registers
        # against 236), the mix backward at 32 positions
        for variant in mix_fwd64:'{"_MIX_FWD": {"BLOCK_J": 64, "CHUNKS": 4, "num_warps": 4}}' \
                mix_fwd128:'{"_MIX_FWD": {"BLOCK_J": 128, "CHUNKS": 2, "num_warps": 4}}' \
                attend_bwd_w8:'{"_ATTEND_BWD": {"num_warps": 8}}' \
                mix_bwd32:'{"_MIX_BWD": {"BLOCK_J": 32}}'; do
            python3 docs/device/kernel_ab.py . --settings "${variant#*:}" \
                --json "$OUT/kernel_head_${variant%%:*}_$round.json" 2>&1 | log kernel_ab.txt
        done
    done
    ;;
dali)
    site=$(torch_site)
    mkdir -p /tmp/dali && cp .gpu/dali/part.* /tmp/dali/ 2>/dev/null
    cat /tmp/dali/part.* | xz -dc -T0 | tar -x -C "$site" --skip-old-files || exit 1
    # --target: beside torch, and allowed even where the system Python is marked externally managed (PEP 668)
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/dali/whl/*.whl || exit 1
    dali_libs "$site"
    python3 -c 'import nvidia.dali; print("DALI", nvidia.dali.__version__)' 2>&1 | log device.txt
    python3 -m pytest -q -p no:cacheprovider tests/test_loader.py -k dali_on_the_gpu 2>&1 | log pytest_dali.txt
    data=$(photos) || exit 1
    python3 tools/bench_loader.py --data "$data" --backends torch,dali --device cuda \
        --workers 8 --batch-size 128 --rounds 2 --json "$OUT/bench_loader_gpu.json" 2>&1 | log bench_loader.txt
    # where a DALI pass spends its time: feed, build, first batch, steady batches; nvJPEG's hardware decoder or not
    python3 docs/device/dali_probe.py --data "$data" --json "$OUT/dali_probe.json" 2>&1 | log dali_probe.txt
    ;;
ffcv)
    ffcv_env || exit 1
    python3 -c 'import ffcv, pipelines.ffcv_loader; print("FFCV", ffcv.__file__)' 2>&1 | log device.txt
    # FFCV's contract test on this machine's numba, numpy and torch, and its GPU test (ToDevice gives the CPU
    # batches bit for bit, no sync); then FFCV against torchvision decoding to the GPU
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_loader.py -k 'ffcv and (contract or gpu)' 2>&1 \
        | log pytest_ffcv.txt
    data=$(photos) || exit 1
    python3 tools/bench_loader.py --data "$data" --backends ffcv,torch --device cuda --workers 8 \
        --batch-size 128 --rounds 2 --json "$OUT/bench_loader_ffcv_gpu.json" 2>&1 | log bench_loader_ffcv.txt
    ;;
train)
    backend=${2:-torch}
    [ "$backend" = dali ] && dali_libs "$(torch_site)"
    python3 tools/convert_datasets.py digits --out /tmp/gpu-data --formats dali --no-progress 2>&1 | log train_$backend.txt
    torchrun --standalone --nproc_per_node 1 train_fast.py --preset demo --data-dir /tmp/gpu-data/digits \
        --backend "$backend" --epochs 3 --compile --output /tmp/gpu-runs --overwrite 2>&1 | log train_$backend.txt
    cp /tmp/gpu-runs/demo/metrics.jsonl "$OUT/train_${backend}_metrics.jsonl"
    # the best checkpoint re-evaluated on the GPU: must repeat the figures the run logged for its epoch
    python3 tools/validate.py --data-dir /tmp/gpu-data/digits --checkpoint /tmp/gpu-runs/demo --backend "$backend" \
        --json "$OUT/validate_$backend.json" 2>&1 | log train_$backend.txt
    ;;
train-photos)
    # the paper's recipe (ViT-B/16 Ne-Att, --aa v0, erasing, bf16, compile) on the ImageNet-like photos: step
    # throughput and data stall per window of 10 steps, two epochs of 56 steps
    backend=${2:-torch}
    [ "$backend" = dali ] && dali_libs "$(torch_site)"
    [ "$backend" = ffcv ] && { ffcv_env || exit 1; }
    data=$(photos) || exit 1
    torchrun --standalone --nproc_per_node 1 train_fast.py --preset vitb16_300ep --data-dir "$data" \
        --num-classes 10 --backend "$backend" --epochs 2 --warmup-epochs 1 --cooldown-epochs 0 --workers 12 \
        --log-interval 10 --output /tmp/gpu-runs --experiment "photos-$backend" --overwrite 2>&1 \
        | log train_photos_$backend.txt
    cp "/tmp/gpu-runs/photos-$backend/metrics.jsonl" "$OUT/train_photos_${backend}_metrics.jsonl"
    ;;
*)
    echo "usage: $0 stash|model|kernel|dali|ffcv|train [BACKEND]|train-photos [BACKEND]" >&2
    exit 2
    ;;
esac
