# session 24, call 2: why the channels-last GPU test failed (3 of 4) — per step and parameter, channels-last against NCHW beside NCHW against a second NCHW trainer (the noise floor), float32 and bf16, graphed and eager; then the fused terms timed as replayed CUDA graphs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; cat commit.txt; echo "--- command"; cat gpu_call7.sh) > $OUT/gpu.txt
F="Warning\|_warn_once\|USDT"
timeout 200 python3 -m pytest -q -s -m gpu tests/diag_layout_test.py -p no:cacheprovider 2>&1 | grep -v "$F" > $OUT/diag.txt; grep -c DIAG $OUT/diag.txt; tail -2 $OUT/diag.txt
timeout 120 python3 -m pytest -q -m gpu tests/test_gpu.py -k channels_last -p no:cacheprovider 2>&1 | grep -v "$F" | tail -30 > $OUT/gpu_tests.txt; tail -2 $OUT/gpu_tests.txt
timeout 200 python3 bench/fused_terms.py --out $OUT/fused_terms.json --reps 20 --blocks 32x64x4,64x64x4,128x32x4,32x32x4,64x32x4,256x16x4,16x128x4 2>&1 | grep -v "$F" > $OUT/fused_terms_log.txt; tail -3 $OUT/fused_terms_log.txt
date -u >> $OUT/gpu.txt
