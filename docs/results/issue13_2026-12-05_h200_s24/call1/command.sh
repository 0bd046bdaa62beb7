# session 24, call 1: the new GPU test of train.channels_last; the fused terms' kernels timed against their bytes (bench/fused_terms.py); three more seeds of the FRS student, NCHW and channels-last, the same teacher (it must reach session 23's 26.16 AP to pool). 8 files back: gpu.txt, log.txt, fused_terms.json, claim/ (5)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; cat commit.txt; echo "--- command"; cat gpu_call6.sh) > $OUT/gpu.txt
F="Warning\|_warn_once\|USDT"
echo "=== pytest -m gpu -k channels_last" > $OUT/log.txt
timeout 120 python3 -m pytest -q -m gpu tests/test_gpu.py -k channels_last -p no:cacheprovider 2>&1 | grep -v "$F" | tail -30 >> $OUT/log.txt; tail -2 $OUT/log.txt
echo "=== bench/fused_terms.py" >> $OUT/log.txt
timeout 150 python3 bench/fused_terms.py --out $OUT/fused_terms.json 2>&1 | grep -v "$F" >> $OUT/log.txt; tail -3 $OUT/log.txt
echo "=== bench/frs_claim.py" >> $OUT/log.txt; date -u >> $OUT/log.txt
timeout 300 python3 bench/frs_claim.py --out $OUT/claim --work /tmp/claim --gpus 1 --deadline 285 --teacher-epochs 24 --eval-every 12 --plan "b=2,3,4 b+cl=2,3,4" --variant cl=train.channels_last=true 2>&1 | grep -v "$F" >> $OUT/log.txt; tail -8 $OUT/log.txt | cut -c1-200
date -u >> $OUT/gpu.txt
