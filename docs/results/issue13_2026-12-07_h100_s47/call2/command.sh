# session 47, call 2 (on the machine call 1 left warm): every row of the step target on main (any card): x101-r50, 128/1024/4096 views, int8 and int5 warm and cold, float16 warm, paired with plain and online steps
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call33.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
rm -rf /tmp/cs
timeout 540 python3 bench/cached_step.py --out $OUT/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 480 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py $OUT/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
date -u >> $OUT/gpu.txt
