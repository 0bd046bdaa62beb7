# session 47, call 3: R50-FPN v2's teacher-cache rate, int8, two turns of the default pass over 4096 views (2048 images), with the dirty pages of each write (0fe7333), on whichever card comes; verdicts and dirty-page columns by tcr_turns.py
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime; grep -E "Dirty|Writeback:|MemTotal|MemAvailable" /proc/meminfo) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call34.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 200 python3 bench/teacher_cache_rate.py --out $OUT/tcr_r50v2.json --work /tmp/tcr34 --teachers r50v2 --dtypes int8 --images 2048 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -6
python3 bench/tcr_turns.py $OUT/tcr_r50v2.json > $OUT/verdicts.txt 2>&1; tail -12 $OUT/verdicts.txt
rm -rf /tmp/tcr34
date -u >> $OUT/gpu.txt
