#!/usr/bin/env bash
# The third prepared GPU run (../shared/gpu/README.md): prepare with
#   ../shared/gpu/prepare --data nips17:40   (plus threadpoolctl's wheel copied into .gpu/whl)
# then on the GPU machine: source .gpu/setup; bash benchmarks/gpu_check3.sh
# The paper's GAN with B images trained together, in float32 and under bfloat16 autocast (issue 14),
# the native-resolution IWD estimate and `iwdctl measure --device cuda` against --device cpu (issue
# 13), and the default IWDA on CUDA; each
# under its own time limit (measure_speed.py warms each kind up untimed, hence its 140 s; the native
# estimate 120 s: its matching's graph work runs on the CPU, about 75 s per pair there), results
# copied to $OUT. nips17 there is the first 40 photos of images.csv.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
  python3 -c "import numba; print('numba', numba.__version__)" 2>&1 | tail -1
  python3 -c "import ot; print('POT', ot.__version__)" 2>&1 | tail -1; } > "$OUT/machine.txt"
timeout 130 python3 benchmarks/gan_time.py --preset paper --steps 3 --together 1,32 --precisions fp32,bf16 \
    > "$OUT/gan_time.txt" 2>&1
cp benchmarks/results/gan_time_cuda.md "$OUT/" 2>/dev/null
timeout 120 python3 benchmarks/estimate_native.py --device cuda --photos 1 > "$OUT/estimate.txt" 2>&1  # rows written pair by pair
cp benchmarks/results/estimate_native_cuda.md "$OUT/" 2>/dev/null
timeout 140 python3 benchmarks/measure_speed.py --pairs 2 --big-pairs 0 --first 0 --estimate-kinds '' \
    --devices cpu,cuda --no-pot --results measure_speed_cuda.md > "$OUT/measure.txt" 2>&1
cp benchmarks/results/measure_speed_cuda.md "$OUT/" 2>/dev/null
start=$(date +%s%N)
timeout 90 iwdctl attack ../shared/data/nips17 --limit 16 --batch-size 16 --out /tmp/iwdaot > "$OUT/iwda_ot.txt" 2>&1
echo "rc $? milliseconds $(( ($(date +%s%N) - start) / 1000000 ))" >> "$OUT/iwda_ot.txt"
cp /tmp/iwdaot/report.csv /tmp/iwdaot/report.json "$OUT/" 2>/dev/null
tail -n 3 "$OUT"/*.txt
