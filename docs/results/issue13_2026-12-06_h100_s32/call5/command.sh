# session 32, call 5: pytest -m gpu on main after the writers' module stopped importing torch (8e88bd1), the slowest tests timed
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call5.sh $OUT/command.sh
timeout 330 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=30 tests > /tmp/gpu_tests_full.txt 2>&1; echo rc=$? >> /tmp/gpu_tests_full.txt; tail -80 /tmp/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
