# session 46, call 2 (on the machine call 1 left warm): cached_step's 128-view int8 rows, X101 -> R50 at 80 classes, its unpaired plain and online rows through StepGraphs (cd60cc1), in 150 s
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u) > $OUT/gpu.txt; cp commit.txt $OUT/commit.txt; cp gpu_call31.sh $OUT/command.sh
rm -rf /tmp/r /tmp/cs /tmp/speed; mkdir -p /tmp/r
timeout 150 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128 --dtypes int8 --steps 60 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 90 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/step_log.txt | tail -2 | cut -c1-300
cp /tmp/r/step/step.json $OUT/step.json
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/step_verdicts.txt; tail -4 $OUT/step_verdicts.txt
date -u >> $OUT/gpu.txt
