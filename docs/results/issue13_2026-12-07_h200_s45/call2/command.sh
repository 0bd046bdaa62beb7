# session 45, call 2 (on the machine call 1 left warm, the wheels installed there): R50-FPN v2's teacher-cache rate again, two turns of the default pass, int8 and int5, 4096 views
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8; (nvidia-smi --query-gpu=name,driver_version --format=csv; date -u) > $OUT/gpu.txt; cp commit.txt $OUT/commit.txt
timeout 400 python3 bench/teacher_cache_rate.py --out $OUT/tcr_r50v2.json --work /tmp/tcr26 --teachers r50v2 --dtypes int8,int5 --images 2048 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/log.txt | tail -6
python3 bench/tcr_turns.py $OUT/tcr_r50v2.json > $OUT/verdicts.txt 2>&1; tail -5 $OUT/verdicts.txt; date -u >> $OUT/gpu.txt
