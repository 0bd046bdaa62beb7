# session 15, call 4: the int8 rows of the step target again on the package as it lands (the one-copy span reverted: the package is aa0f21f's), to see whether call 3's one miss (int8, 4096 views, cold, 1.114) repeats; call 3's command with --dtypes int8 and without the online step
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call4.sh $OUT/command.sh
timeout 300 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 \
  --dtypes int8 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row \
  --worker-sweep "" --ahead --budget-s 240 2>&1 | grep -v Warning | tee $OUT/step.log | tail -3
tar -cf $OUT/step.tar -C /tmp step
date -u >> $OUT/gpu.txt
