# session 47, call 1: on an H200 R50-FPN v2's teacher-cache rate, int8, two turns of the default pass over 2048 views, with the dirty pages of each write (0fe7333); then on any card pytest -m gpu with room for its summary line
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime; grep -E "Dirty|Writeback:|MemTotal" /proc/meminfo; sysctl vm.dirty_ratio vm.dirty_background_ratio vm.dirty_bytes vm.dirty_background_bytes 2>&1) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call32.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
timeout 120 python3 bench/teacher_cache_rate.py --out $OUT/tcr_r50v2.json --work /tmp/tcr32 --teachers r50v2 --dtypes int8 --images 2048 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v "$F" | tee $OUT/log.txt | tail -6
python3 bench/tcr_turns.py $OUT/tcr_r50v2.json > $OUT/verdicts.txt 2>&1; tail -8 $OUT/verdicts.txt
rm -rf /tmp/tcr32
fi
date -u >> $OUT/gpu.txt
timeout 330 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=15 tests 2>&1 | tail -60 > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
