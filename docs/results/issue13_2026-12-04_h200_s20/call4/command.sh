# session 20, call 4: at 80 classes the int5 rows (128, 1024, 4096 views, warm and cold) and the float16 rows (warm) of the step target, plain, cached and online paired, 100 steps, --ahead; teacher-cache rates on 8 views (not a measure)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call4.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 430 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128,1024,4096 --dtypes int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 8 --disk-mb 16 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 350 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
