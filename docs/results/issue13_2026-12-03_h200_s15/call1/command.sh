# session 15, call 1: pytest -m gpu on the worker hold (aa0f21f); then the hold's effect on the GPU step: at 1024 warm views per dtype, plain, cached and gt_cached (--split) with workers holding 6 buffers, and plain and cached again with workers holding none (--hold-ab), interleaved in the same blocks
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
timeout 440 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 1024 \
  --dtypes float16,int5,int8 --no-cold --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row \
  --worker-sweep "" --split --hold-ab --ahead --budget-s 400 2>&1 | grep -v Warning | tee $OUT/step.log | tail -3
tar -cf $OUT/step.tar -C /tmp step
date -u >> $OUT/gpu.txt
