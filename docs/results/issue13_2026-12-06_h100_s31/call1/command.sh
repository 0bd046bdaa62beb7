# session 31, call 1: pytest -m gpu on main 33203e4 (after session 30's warnings and checks), then a diagnostic of the cached step's extra kernels by op and input shape (tests/diag_layout.py, not part of the suite)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh; cp tests/diag_layout.py $OUT/diag_layout.py.txt
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; echo rc=$? >> $OUT/gpu_tests_full.txt; tail -30 $OUT/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
timeout 220 python3 tests/diag_layout.py /tmp/dg 2>&1 | grep -v "USDT\|Warning" | tee $OUT/diag.txt | tail -30
tar -czf $OUT/dg.tgz -C /tmp dg
date -u >> $OUT/gpu.txt
