#!/usr/bin/env bash
# The GPU work of issues 17 (item 1) and 19 as one prepared script, for a session that is lent
# the workplace's GPU machine (15 device-minutes in all). That machine has python3 with torch
# and pytest but not the CIFAR-10 files nor torch-pruning, and a call carries at most 64 MiB
# with the repository (~30 MB) and brings back at most 8 files of 16 MB: hence the stages.
#
# Here, once (CROSSDISTILL_DATA set; .gpu/ is git-ignored, so `carry` takes it):
#   bash benchmarks/gpu_session.sh prepare         # .gpu/: the train set in 4 xz parts, test set, wheel
# There, one call per stage, back to back (the machine stays warm 30 s after a call), most
# important first; each stage ends well inside the 10-minute limit of a call:
#   bash benchmarks/gpu_session.sh checks          # carry [".gpu/whl"]: CUDA tests, CPU vs GPU stages
#   bash benchmarks/gpu_session.sh receive 1       # carry [".gpu/cifar_train_1.npz.xz"]; then 2, 3
#   bash benchmarks/gpu_session.sh teacher         # carry [".gpu/cifar_train_4.npz.xz", ".gpu/cifar10_test1000.npz"]
#   bash benchmarks/gpu_session.sh paper           # carry [".gpu/whl", ".gpu/cifar10_test1000.npz"]; only if device
#        time is left, on the same warm machine: the 12 paper-solver runs of issue 19 (PAPER_SECONDS caps it)
# What comes back under $OUT: checks -> cuda_tests.log, scale.txt; teacher -> teacher.log,
# vgg16_cifar10.log.jsonl and the weights in two pieces (cat vgg16.part.* > the .safetensors);
# paper -> paper.log and vgg16_paper.sqlite (the sweep's rows; the CPU sweep can then run into a copy of it).
set -euo pipefail
stage=${1:?prepare, checks, receive N, teacher or paper}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

receive() {  # keep a carried part where the next call still finds it (the repository copy is replaced)
    mkdir -p /tmp/cifar
    cp ".gpu/cifar_train_$1.npz.xz" /tmp/cifar/
    ls -la /tmp/cifar
}

case "$stage" in
prepare)
    : "${CROSSDISTILL_DATA:?set CROSSDISTILL_DATA to the shared data folder}"
    mkdir -p .gpu/whl
    .venv/bin/python - <<'EOF'
import io, lzma, os
import numpy as np
d = np.load(os.path.join(os.environ["CROSSDISTILL_DATA"], "cifar10", "cifar10_train.npz"))
x, y = d["x"], d["y"]
for k, part in enumerate(np.array_split(np.arange(len(y)), 4), start=1):
    buf = io.BytesIO()
    np.savez(buf, x=x[part], y=y[part])
    path = f".gpu/cifar_train_{k}.npz.xz"
    with open(path, "wb") as f:
        f.write(lzma.compress(buf.getvalue(), preset=9))
    print(path, os.path.getsize(path) // 2**20, "MiB")
EOF
    cp "$CROSSDISTILL_DATA/cifar10/cifar10_test1000.npz" .gpu/
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl torch-pruning==1.6.1
    du -sh .gpu/*
    ;;
receive)
    receive "${2:?part number}"
    ;;
checks)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="$here/src:/tmp/site" PYTHONUNBUFFERED=1
    OUT=${OUT:-/tmp/gpu-out}
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/scale.txt"
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/scale.txt"
    # 1. The CUDA tests (GPU student = CPU student, fine-tune, views, training baselines).
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_device_follow.py \
        > "$OUT/cuda_tests.log" 2>&1 || echo "CUDA tests: exit $?" | tee -a "$OUT/cuda_tests.log"
    tail -3 "$OUT/cuda_tests.log"
    # 2. CPU (16 threads) vs GPU, seconds per stage (issue 17 item 1): random weights and images.
    for spec in "resnet56 50 32 cpu cuda" "resnet18 128 224 cpu cuda" "examples/resnet50.py:resnet50 512 224 cuda"; do
        set -- $spec
        timeout 150 python3 benchmarks/scale_network.py --model "$1" --images "$2" --size "$3" --processes 1 \
            --threads 16 --device "${@:4}" >> "$OUT/scale.txt" 2>&1 || echo "scale $1: exit $?" >> "$OUT/scale.txt"
    done
    cat "$OUT/scale.txt"
    ;;
teacher)
    receive 4
    export PYTHONPATH="$here/src" PYTHONUNBUFFERED=1
    OUT=${OUT:-/tmp/gpu-out}
    mkdir -p "$OUT"
    # The VGG-16 teacher (issue 19): the whole train set, 1000 test images.
    timeout 420 python3 benchmarks/train_teacher.py --data /tmp/cifar/cifar_train_{1,2,3,4}.npz.xz \
        --test .gpu/cifar10_test1000.npz --device cuda --out /tmp/teacher/vgg16_cifar10.safetensors \
        > "$OUT/teacher.log" 2>&1 || echo "teacher: exit $?" | tee -a "$OUT/teacher.log"
    tail -4 "$OUT/teacher.log"
    if [ -f /tmp/teacher/vgg16_cifar10.safetensors ]; then
        split -b 15M /tmp/teacher/vgg16_cifar10.safetensors "$OUT/vgg16.part."
        cp /tmp/teacher/vgg16_cifar10.log.jsonl "$OUT/"
    fi
    ;;
paper)
    # Needs the teacher and the four train parts that this machine's earlier stages left in /tmp.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="$here/src:/tmp/site" PYTHONUNBUFFERED=1
    OUT=${OUT:-/tmp/gpu-out}
    mkdir -p "$OUT"
    python3 -c '
import io, lzma
import numpy as np
parts = [np.load(io.BytesIO(lzma.decompress(open(f"/tmp/cifar/cifar_train_{k}.npz.xz", "rb").read()))) for k in (1, 2, 3, 4)]
np.savez("/tmp/cifar/cifar10_train.npz", x=np.concatenate([p["x"] for p in parts]), y=np.concatenate([p["y"] for p in parts]))
'
    timeout "${PAPER_SECONDS:-400}" python3 -m crossdistill.cli.main sweep configs/vgg16_tables_paper.yaml \
        --db "$OUT/vgg16_paper.sqlite" --set device=cuda --set data=/tmp/cifar/cifar10_train.npz \
        --set eval_data=.gpu/cifar10_test1000.npz --set weights=/tmp/teacher/vgg16_cifar10.safetensors ${PAPER_ARGS:-} \
        > "$OUT/paper.log" 2>&1 || echo "paper: exit $?" | tee -a "$OUT/paper.log"
    tail -5 "$OUT/paper.log"
    ;;
*)
    echo "unknown stage $stage: prepare, checks, receive N, teacher or paper" >&2
    exit 2
    ;;
esac
