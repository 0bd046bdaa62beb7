# session 44, call 1: pytest -m gpu on main (any card); then, on an H200 only, teacher-cache rate, R50-FPN v2 and X101-32x8d, int8 and int5, 4096 views
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call20.sh $OUT/command.sh
timeout 250 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=15 tests 2>&1 | tail -60 > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { echo "not an H200: teacher-cache rate not run"; exit 0; }
timeout 250 python3 bench/teacher_cache_rate.py --out $OUT/tcr_main.json --work /tmp/tcr20 --teachers r50v2,x101 --dtypes int8,int5 --images 2048 --variants graphs --no-pass-figures 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/log.txt | tail -8
python3 bench/tcr_turns.py $OUT/tcr_main.json > $OUT/verdicts.txt 2>&1; tail -6 $OUT/verdicts.txt
date -u >> $OUT/gpu.txt
