# session 18, call 3: pytest -m gpu on the per-step comparison of the graphed step; profiles of resident_plain_sg and resident_cached_sg by device time; then the int8 and int5 rows of the step target (128, 1024, 4096 views, warm and cold; plain, cached and online paired, 100 steps, --ahead) with the step as one CUDA graph (train.cuda_graphs, the default)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
timeout 90 python3 bench/loader_cost.py --out /tmp/lc --work /tmp/lcw --dtype int8 --rounds 1 --steps 10 --variants resident_plain_sg --profile --profile-sort cuda --profile-variants resident_plain_sg,resident_cached_sg 2>&1 | grep -v "Warning\|USDT\|_warn_once" > $OUT/lc_log.txt; tail -3 $OUT/lc_log.txt
mkdir -p /tmp/r
timeout 340 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8,int5 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 300 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -5 $OUT/verdicts.txt
tar -cf $OUT/r.tar -C /tmp r lc
date -u >> $OUT/gpu.txt
