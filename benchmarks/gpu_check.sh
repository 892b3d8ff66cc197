#!/usr/bin/env bash
# The course's GPU checks in one run, on a machine with a CUDA GPU (a lab server, a cloud VM):
#   1. the CUDA tests (tests/test_precision.py runs each test on CPU and on CUDA; the CUDA half),
#   2. the GPU track of bench_fra_eng.py: bf16 against fp32 at equal steps, then the 5-minute
#      bf16 recipe (needs ../shared/data/fra-eng/fra.txt, or COURSE_SHARED_DIR).
# Usage, in the repository root:  bash benchmarks/gpu_check.sh [RESULTS_DIR]
# Everything it prints also goes to RESULTS_DIR (default benchmarks/results/gpu).
set -uo pipefail
results=${1:-benchmarks/results/gpu}
mkdir -p "$results"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$results/gpu.txt"
timeout 100 "$python" -m pytest -q -p no:cacheprovider -rs tests/test_precision.py \
    tests/test_training_autocast.py -k "cuda or autocast" 2>&1 | tee "$results/cuda_tests.log"
timeout 480 "$python" benchmarks/bench_fra_eng.py --device cuda --csv "$results/fra_eng_gpu.csv" \
    --jsonl "$results/fra_eng_gpu.jsonl" 2>&1 | tee "$results/fra_eng_gpu.log"
