#!/usr/bin/env bash
# One prepared GPU run (../shared/gpu/README.md): prepare with
#   ../shared/gpu/prepare --data tiny6,nips17:100
# then on the GPU machine: source .gpu/setup; bash benchmarks/gpu_check.sh
# It runs the CUDA test suite (without the POT-based IWD tests, which need POT's 33 MB wheel, and the
# README and Table 2 harness tests, which take minutes), the throughput benchmark on CUDA and the
# native-resolution IWD estimate, each under its own time limit, and copies what it finds to $OUT.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; python3 -c "import numba" 2>&1 | tail -1; } > "$OUT/machine.txt"
timeout 200 python3 -m pytest -v -p no:cacheprovider -rfE --durations=10 \
    --ignore=tests/test_iwd.py --ignore=tests/test_measure.py --ignore=tests/test_readme.py \
    --ignore=tests/test_table2.py > "$OUT/pytest.txt" 2>&1
timeout 140 python3 benchmarks/throughput.py --images 100 --batch-size 100 --device cuda --repeats 1 \
    --rows torchattacks,none,exact,iwda-fast,iwda-ot,eval > "$OUT/throughput.txt" 2>&1
cp benchmarks/results/throughput_cuda.md "$OUT/" 2>/dev/null
timeout 60 python3 benchmarks/estimate_native.py --device cuda --photos 1 > "$OUT/estimate.txt" 2>&1
cp benchmarks/results/estimate_native_cuda.md "$OUT/" 2>/dev/null
tail -3 "$OUT/pytest.txt"
