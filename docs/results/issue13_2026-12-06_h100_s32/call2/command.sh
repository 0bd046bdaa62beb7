# session 32, call 2: diagnostics (tests/diag_bf16_test.py, not in the suite): a bf16 step's distance from the float32 step, NCHW and channels-last; the graphed distill's drift from the eager one beside eager against eager
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh; cp tests/diag_bf16_test.py $OUT/diag_bf16_test.py.txt
F="Warning\|_warn_once\|USDT"
timeout 400 python3 -m pytest -q -s -m gpu tests/diag_bf16_test.py -p no:cacheprovider 2>&1 | grep -v "$F" > $OUT/diag.txt; grep -c DIAG $OUT/diag.txt; grep "DIAG-SUMMARY\|DIAG-DRIFT" $OUT/diag.txt; tail -2 $OUT/diag.txt | cut -c1-300
date -u >> $OUT/gpu.txt
