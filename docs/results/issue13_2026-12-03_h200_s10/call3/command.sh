# session 10, call 3: each row's online step paired with its cached and plain steps, and the prefetcher's A/B in the same blocks (x101-r50, int8 and int5)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
timeout 320 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 128,4096 \
  --dtypes int8,int5 --steps 40 --block 10 --rate-views 256 --disk-mb 64 --no-zarr-row --worker-sweep "" \
  --online-paired --feeder-ab --budget-s 200 2>&1 | grep -v Warning | tee $OUT/step.log | tail -2
cp /tmp/step/step.json $OUT/step.json
date -u >> $OUT/gpu.txt
