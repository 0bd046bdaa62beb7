# session 42, call 2: the writer processes' os._exit (HEAD), R50-FPN v2 teacher-cache rate over 4096 views, int8 and int5, two turns, then pytest -m gpu
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call15.sh $OUT/command.sh
timeout 230 python3 bench/teacher_cache_rate.py --out $OUT/tcr_exit.json --work /tmp/tcr15 --teachers r50v2 --dtypes int8,int5 --images 2048 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/log.txt | tail -4
python3 bench/tcr_turns.py $OUT/tcr_exit.json > $OUT/verdicts.txt 2>&1; tail -4 $OUT/verdicts.txt
python3 -c "
import json; r=json.load(open('$OUT/tcr_exit.json'))
for d, per in r['teachers']['r50v2']['caches'].items():
    for k, c in per.items(): print(d, k, 'join', round(c['stage_seconds']['join'], 3), 'over', round(c['over_inference'], 3))"
timeout 280 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=15 tests 2>&1 | tail -60 > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
