# session 16, call 2: the 15 step rows on main after valid-in-graph merged (session 14's call-1 command, as session 15's call 3)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 575 python3 bench/cached_step.py --out /tmp/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 540 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/step.log | tail -40
tar -cf $OUT/step.tar -C /tmp step
date -u >> $OUT/gpu.txt
