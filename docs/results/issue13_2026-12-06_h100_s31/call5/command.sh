# session 31, call 5: on an H200 (the issue's card), every row of issue 13's step target in one command; on an H100 instead: loader_cost int8 at 80 classes, X101 -> R50, the step as one CUDA graph, plain, cached and online, each NCHW and with the student channels-last (train.channels_last, _cl), three rounds: what online / cached would be with the student channels-last
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call5.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
if ! grep -q H200 $OUT/gpu.txt; then
  timeout 300 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 3 --warmup 24 --steps 40 --variants resident_plain_sg,resident_plain_sg_cl,resident_cached_sg,resident_cached_sg_cl,resident_online_sg,resident_online_sg_cl 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | grep "^round" | cut -c1-160
  cp /tmp/r/lc/loader_cost.json $OUT/ 2>/dev/null
  date -u >> $OUT/gpu.txt; exit 0
fi
rm -rf /tmp/r /tmp/cs; mkdir -p /tmp/r
timeout 555 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50,r50v2-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 1024 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 500 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
python3 bench/gpu_hours.py /tmp/r/step/step.json --out /tmp/r/step/gpu_hours.json > /dev/null 2>&1
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
