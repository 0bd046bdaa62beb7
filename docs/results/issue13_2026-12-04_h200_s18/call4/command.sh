# session 18, call 4: pytest -m gpu (with distill_student end to end on the step graphs); then the float16 rows of the step target (128, 1024, 4096 views, warm; plain, cached and online paired, 100 steps, --ahead) with train.cuda_graphs (the default)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call4.sh $OUT/command.sh
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
mkdir -p /tmp/r
timeout 330 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 --dtypes float16 --warm-only float16 --steps 100 --block 10 --rate-views 8 --disk-mb 16 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 290 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
