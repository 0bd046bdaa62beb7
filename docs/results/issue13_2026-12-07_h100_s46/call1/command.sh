# session 46, call 1 (one call, device time short): on an H200 R50-FPN v2's teacher-cache rate, int8, two turns of the default pass over 4096 views, with the dirty pages of each write; then on any card the issue's own speed.py command (--repeat 1, int8) with the trainer's steps
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call30.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
timeout 110 python3 bench/teacher_cache_rate.py --out $OUT/tcr_r50v2.json --work /tmp/tcr29 --teachers r50v2 --dtypes int8 --images 2048 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -6
python3 bench/tcr_turns.py $OUT/tcr_r50v2.json > $OUT/verdicts.txt 2>&1; tail -8 $OUT/verdicts.txt
rm -rf /tmp/tcr29
fi
date -u >> $OUT/gpu.txt
timeout 180 python3 bench/speed.py --out $OUT/speed.json --work /tmp/speed --pairs x101-r50 --workers 12 --images 128 --dtypes int8 --repeat 1 2>&1 | grep -v "$F" | tee $OUT/speed_log.txt | tail -3 | cut -c1-600
date -u >> $OUT/gpu.txt
