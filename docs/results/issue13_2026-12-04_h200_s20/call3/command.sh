# session 20, call 3: pytest -m gpu with the head term's gradient channels-last and distill.teacher_beside; loader_cost int8 at 80 classes A/B of the head gradient's layout (_hl: the logits' own); then at 80 classes the int8 rows (128, 1024, 4096 views, warm and cold) of the step target, plain, cached and online paired, 100 steps, --ahead, with teacher-cache's rate on 256 views
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 170 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
timeout 80 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 1 --warmup 24 --steps 30 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_hl 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | tail -6
tar -cf $OUT/r.tar -C /tmp r
timeout 310 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 270 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
