# session 48, call 3: R50-FPN v2's teacher-cache rate, int8, the default pass over 4096 views (2048 images), with 8, 12 and 16 writer processes in turn, twice, with the dirty pages of each write (main, commit.txt), on an H200 (a call for the H200 kind; an H100 may come); verdicts by tcr_turns.py
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime; grep -E "Dirty|Writeback:|MemTotal|MemAvailable" /proc/meminfo; sysctl vm.dirty_background_ratio vm.dirty_ratio) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call37.sh $OUT/command.sh
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { echo "not an H200: nothing run"; exit 0; }
F="Warning\|USDT\|_warn_once"
timeout 330 python3 bench/teacher_cache_rate.py --out $OUT/tcr_r50v2.json --work /tmp/tcr37 --teachers r50v2 --dtypes int8 --images 2048 --variants graphs,graphs --write-processes 8,12,16 --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -8
python3 bench/tcr_turns.py $OUT/tcr_r50v2.json > $OUT/verdicts.txt 2>&1; tail -14 $OUT/verdicts.txt
rm -rf /tmp/tcr37
date -u >> $OUT/gpu.txt
