# session 19, call 4: pytest -m gpu with the fused decode of packed codes (Triton); then at COCO's classification width (--classes 80) the int5 rows (128, 1024, 4096 views, warm and cold) and the float16 rows (warm) of the step target, plain, cached and online paired, 100 steps, --ahead; then loader_cost int5: the fused decode against the PyTorch one (_nd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call4.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
timeout 320 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128,1024,4096 --dtypes int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 8 --disk-mb 16 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 280 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -5 $OUT/verdicts.txt
tar -cf $OUT/r.tar -C /tmp r
timeout 75 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int5 --classes 80 --rounds 1 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_nd 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | tail -6
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
