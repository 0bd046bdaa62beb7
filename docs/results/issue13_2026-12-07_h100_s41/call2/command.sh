# session 41, call 2: R50-FPN v2 teacher-cache rate over 4096 views, int8 and int5, with the fused encode (the default) and without (FRS_FUSED_ENCODE=0), back to back; then pytest -m gpu
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call11.sh $OUT/command.sh
timeout 150 python3 bench/teacher_cache_rate.py --out $OUT/tcr_fused.json --work /tmp/tcr7 --teachers r50v2 --dtypes int8,int5 --images 2048 --variants graphs --no-pass-figures 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/log.txt | tail -2
FRS_FUSED_ENCODE=0 timeout 150 python3 bench/teacher_cache_rate.py --out $OUT/tcr_torch.json --work /tmp/tcr8 --teachers r50v2 --dtypes int8,int5 --images 2048 --variants graphs --no-pass-figures 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee -a $OUT/log.txt | tail -2
(python3 bench/tcr_turns.py $OUT/tcr_fused.json; python3 bench/tcr_turns.py $OUT/tcr_torch.json) > $OUT/verdicts.txt 2>&1
date -u >> $OUT/gpu.txt
timeout 250 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=15 tests > /tmp/gpu_tests_full.txt 2>&1; echo rc=$? >> /tmp/gpu_tests_full.txt; tail -60 /tmp/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt; df -h /tmp | tail -1 >> $OUT/gpu.txt
