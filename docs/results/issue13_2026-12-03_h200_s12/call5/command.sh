# session 12, call 5: pytest -m gpu on the torchrun Ctrl-C agreement that does not wait for the step in flight
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call5.sh $OUT/command.sh
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
