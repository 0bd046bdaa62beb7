# session 13, call 1: pytest -m gpu on HostCopy; the read-back test once with HostCopy waiting for the whole device (must fail); then every row of the step target timed as the trainer now runs its steps (--ahead), with each row's online step paired
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
cp frs_cli/train/readback.py /tmp/readback.py
sed -i 's/self._event.synchronize()/torch.cuda.synchronize()/' frs_cli/train/readback.py
grep -n "synchronize" frs_cli/train/readback.py > $OUT/gpu_tests_broken.txt
timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py -k read_without_waiting 2>&1 | tail -4 | tee -a $OUT/gpu_tests_broken.txt
cp /tmp/readback.py frs_cli/train/readback.py
timeout 450 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 \
  --dtypes int8,int5,float16 --warm-only float16 --steps 40 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row \
  --worker-sweep "" --online-paired --ahead --budget-s 360 2>&1 | grep -v Warning | tee $OUT/step.log | tail -3
tar -cf $OUT/step.tar -C /tmp step
date -u >> $OUT/gpu.txt
