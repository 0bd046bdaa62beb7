# session 41, call 4: R50-FPN v2 teacher-cache rate over 4096 views, int8 and int5, with the fused encode (the default), two turns, on a fresh machine
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call13.sh $OUT/command.sh
timeout 200 python3 bench/teacher_cache_rate.py --out $OUT/tcr_fused.json --work /tmp/tcr11 --teachers r50v2 --dtypes int8,int5 --images 2048 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/log.txt | tail -4
python3 bench/tcr_turns.py $OUT/tcr_fused.json > $OUT/verdicts.txt 2>&1
date -u >> $OUT/gpu.txt
