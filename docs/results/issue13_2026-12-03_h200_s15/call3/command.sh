# session 15, call 3: session 14 call 1's command again (every row of the step target as the trainer runs its steps, 100 steps a row, plain and online paired), now with loader workers holding their last 6 buffers (719c14d) and the graph's cached inputs filled by one copy (7290a74)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
timeout 575 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 \
  --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row \
  --worker-sweep "" --online-paired --ahead --budget-s 540 2>&1 | grep -v Warning | tee $OUT/step.log | tail -3
tar -cf $OUT/step.tar -C /tmp step
date -u >> $OUT/gpu.txt
