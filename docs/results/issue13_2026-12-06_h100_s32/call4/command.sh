# session 32, call 4: pytest -m gpu again on the machine still held from call 3, with the 30 slowest tests timed (call 3 took 252 s against 147 s in call 1)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call4.sh $OUT/command.sh
timeout 330 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=30 tests > /tmp/gpu_tests_full.txt 2>&1; echo rc=$? >> /tmp/gpu_tests_full.txt; tail -80 /tmp/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
