# session 17, call 2: every row of the step target on 1e7cfb6 (code of 80f3299), the command of session 16's call 2 (100 steps a row, plain and online paired, --ahead)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
mkdir -p /tmp/r
timeout 575 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 540 2>&1 | grep -v "Warning\|USDT\|_warn_once" > $OUT/step_log.txt
tail -3 $OUT/step_log.txt | cut -c1-300
python3 bench/cache_verdicts.py /tmp/r/step/step.json > $OUT/verdicts.txt 2>&1; tail -30 $OUT/verdicts.txt
cp /tmp/r/step/step.json $OUT/step.json
date -u >> $OUT/gpu.txt
