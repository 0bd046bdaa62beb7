# session 45, call C: pytest -m gpu on main (any card); then on an H200 teacher-cache rate (R50-FPN v2 and X101-32x8d, int8 and int5, 4096 views), else the step target's rows that fit 260 s
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call25.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 220 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=15 tests 2>&1 | tail -60 > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
timeout 300 python3 bench/teacher_cache_rate.py --out $OUT/tcr_main.json --work /tmp/tcr25 --teachers r50v2,x101 --dtypes int8,int5 --images 2048 --variants graphs --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -8
python3 bench/tcr_turns.py $OUT/tcr_main.json > $OUT/verdicts.txt 2>&1; tail -6 $OUT/verdicts.txt
else
rm -rf /tmp/r /tmp/cs; mkdir -p /tmp/r
timeout 330 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 260 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
cp /tmp/r/step/step.json $OUT/step.json
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
fi
date -u >> $OUT/gpu.txt
