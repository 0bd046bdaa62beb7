# session 30, call 1: pytest -m gpu (timeout 170 s; last GPU run: session 27 call 1 on 3e4e5bc), then as many rows of issue 13's step target as fit in one command (int8, int5: 128/1024/4096 views warm and cold; float16 warm), plain, cached and online paired, 100 steps, --ahead; teacher-cache rates on a 1024-view split for X101 and R50-FPN v2; on main 6d2fc5f
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
T0=$(date +%s)
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
timeout 170 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; echo rc=$? >> $OUT/gpu_tests_full.txt; tail -30 $OUT/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
LEFT=$(( ${TOTAL:-575} - ($(date +%s) - T0) )); echo "left for the step rows: $LEFT s" | tee -a $OUT/gpu.txt
rm -rf /tmp/r /tmp/cs; mkdir -p /tmp/r
F="Warning\|USDT\|_warn_once"
timeout $((LEFT - 15)) python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50,r50v2-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 1024 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s $((LEFT - 70)) 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
python3 bench/gpu_hours.py /tmp/r/step/step.json --out /tmp/r/step/gpu_hours.json > /dev/null 2>&1
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
