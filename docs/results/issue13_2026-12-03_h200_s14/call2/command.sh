# session 14, call 2: pytest -m gpu on the launched step's count (224ffea); then where the cached step's extra time goes: at 1024 warm views per dtype, plain, cached and the plain step fed the cached batches (gt_cached), each with the host's launch time of forward, backward and optimizer and the pinned host blocks created during its blocks (--split)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
timeout 300 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 1024 \
  --dtypes float16,int5,int8 --no-cold --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row \
  --worker-sweep "" --split --ahead --budget-s 260 2>&1 | grep -v Warning | tee $OUT/step.log | tail -3
tar -cf $OUT/step.tar -C /tmp step
date -u >> $OUT/gpu.txt
