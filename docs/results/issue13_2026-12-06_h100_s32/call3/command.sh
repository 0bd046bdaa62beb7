# session 32, call 3: on an H200 (the issue's card), every row of issue 13's step target in one command; on an H100 instead: pytest -m gpu on main (this session's changes that run on the GPU: loader workers leave SIGTERM to the trainer, the stop signals, verify's attribute checks, the reader's shape check, outputs written through)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
if grep -q H200 $OUT/gpu.txt; then
  rm -rf /tmp/r /tmp/cs; mkdir -p /tmp/r
  timeout 555 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50,r50v2-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 1024 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 500 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
  python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
  python3 bench/gpu_hours.py /tmp/r/step/step.json --out /tmp/r/step/gpu_hours.json > /dev/null 2>&1
  tar -cf $OUT/r.tar -C /tmp r
  date -u >> $OUT/gpu.txt; exit 0
fi
timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > /tmp/gpu_tests_full.txt 2>&1; echo rc=$? >> /tmp/gpu_tests_full.txt; tail -40 /tmp/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
