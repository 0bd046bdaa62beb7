# session 49, call 1: pytest -m gpu on main (commit.txt), then on an H200 only R50-FPN v2's teacher-cache rate, int8, the default pass over 4096 views (2048 images), 8 and 12 writer processes, twice each, with each write's dirty pages; verdicts by tcr_turns.py
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime; grep -E "Dirty|Writeback:|MemTotal|MemAvailable" /proc/meminfo; sysctl vm.dirty_background_ratio vm.dirty_ratio) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call39.sh $OUT/command.sh
timeout 290 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee $OUT/gpu_tests.txt | tail -5
date -u >> $OUT/gpu.txt
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { echo "not an H200: no teacher-cache rate run"; exit 0; }
F="Warning\|USDT\|_warn_once"
timeout 280 python3 bench/teacher_cache_rate.py --out $OUT/tcr_r50v2.json --work /tmp/tcr39 --teachers r50v2 --dtypes int8 --images 2048 --variants graphs,graphs --write-processes 8,12 --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -8
python3 bench/tcr_turns.py $OUT/tcr_r50v2.json > $OUT/verdicts.txt 2>&1; tail -14 $OUT/verdicts.txt
rm -rf /tmp/tcr39
date -u >> $OUT/gpu.txt
