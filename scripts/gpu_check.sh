#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (CI has no GPU, so these run by hand):
#   1. tests/unit/test_cuda.py and the CUDA cases of tests/unit/test_linalg.py;
#   2. the MLP scale benchmark with nrc and the bare forward pass on the GPU;
#   3. the speed table of docs/performance.md (exact and mixed against the bare forward pass: MLP 512x6 at
#      N = 2e5, MLP 1024x8 at 1e5, conv at 1e4; 3 interleaved repeats each) on the GPU;
#   4. the whole test suite with the GPU visible (--device auto then picks it).
# Usage: scripts/gpu_check.sh [OUT_DIR]   (logs and the benchmark report land in OUT_DIR)
set -uo pipefail
out=${1:-${OUT:-/tmp/nrc-gpu-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CI=1
py=${PYTHON:-python3}

nvidia-smi -L
"$py" -c "import torch, typer, click, rich; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0), '| typer', typer.__version__, '| click', click.__version__)"
if ! "$py" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/pip.log" 2>&1; then
    echo "pip install -e . failed (see pip.log); using PYTHONPATH"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== CUDA tests"
timeout 300 "$py" -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py "tests/unit/test_linalg.py::test_cuda_matches_cpu" 2>&1 | tee "$out/cuda_tests.log" | tail -25

echo "== GPU benchmark"
timeout 300 "$py" benchmarks/bench_scale.py --device cuda --workloads mlp --sizes 1e5,1e6 \
    --methods forward,nrc --compare-n 0 --repeat 3 --out-dir /tmp/nrc-bench \
    --results "$out/bench_gpu.md" >"$out/bench_gpu.log" 2>&1
grep -E "^\| mlp|device|machine" "$out/bench_gpu.md" || tail -20 "$out/bench_gpu.log"

echo "== speed table (docs/performance.md), on the GPU"
for cell in "mlp512 2e5" "mlp 1e5" "conv 1e4"; do
    set -- $cell
    timeout 400 "$py" benchmarks/bench_precision.py --device cuda --workloads "$1" --n "$2" \
        --repeat 3 --out-dir /tmp/nrc-bench --results "$out/table_$1.md" >"$out/table_$1.log" 2>&1
    grep -E "^\| $1 |exact ÷ mixed" "$out/table_$1.md" || tail -5 "$out/table_$1.log"
done

echo "== whole suite, GPU visible"
timeout "${SUITE_TIMEOUT:-200}" "$py" -m pytest -q -p no:cacheprovider --maxfail=25 tests 2>&1 | tee "$out/suite.log" | tail -15
