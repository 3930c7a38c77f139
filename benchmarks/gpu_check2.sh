#!/usr/bin/env bash
# The second prepared GPU run: `../shared/gpu/prepare --no-lite0 --data tiny6,imagenette64` plus one
# nips17 photo; then `source .gpu/setup; bash benchmarks/gpu_check2.sh`. The tests that failed on CUDA
# in the first run, the Table 2 harness's test, a short Table 2 run on imagenette64 (per-epoch GPU
# times) and the native-resolution IWD estimate.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
timeout 150 python3 -m pytest -v -p no:cacheprovider -rfE \
    tests/test_defend.py::test_two_process_iwdd_trains_one_generator_and_critic \
    tests/test_models.py::test_pickles_load_only_weights \
    tests/test_attacks.py::test_every_attack_fools_the_tiny_model_untargeted tests/test_table2.py > "$OUT/pytest2.txt" 2>&1
timeout 190 python3 benchmarks/table2.py --data ../shared/data/imagenette64 --arch preact_resnet18 --epochs 4 \
    --seeds 1 --methods natural,pgd,iwdd --precision bf16 --schedule cosine --parallel 3 --eval-limit 300 \
    --iwda-limit 50 --runs /tmp/t2 --results "$OUT/table2_gpu.md" > "$OUT/table2.txt" 2>&1
for f in /tmp/t2/*.metrics.csv /tmp/t2/*.eval.json; do echo "== $f"; cat "$f"; done > "$OUT/runs.txt" 2>&1
timeout 60 python3 benchmarks/estimate_native.py --device cuda --photos 1 > "$OUT/estimate.txt" 2>&1
cp benchmarks/results/estimate_native_cuda.md "$OUT/" 2>/dev/null
tail -2 "$OUT/pytest2.txt"
