# session 47, call 4 (on the machine call 3 left warm): teacher-cache rate of R50-FPN v2 and X101-32x8d, int8 and int5, one turn each of the default pass over 4096 views (2048 images), with the dirty pages of each write (0fe7333), on whichever card comes; verdicts and dirty-page columns by tcr_turns.py
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime; grep -E "Dirty|Writeback:|MemTotal|MemAvailable" /proc/meminfo) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call35.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 400 python3 bench/teacher_cache_rate.py --out $OUT/tcr_main.json --work /tmp/tcr35 --teachers r50v2,x101 --dtypes int8,int5 --images 2048 --variants graphs --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -6
python3 bench/tcr_turns.py $OUT/tcr_main.json > $OUT/verdicts.txt 2>&1; tail -12 $OUT/verdicts.txt
rm -rf /tmp/tcr35
date -u >> $OUT/gpu.txt
