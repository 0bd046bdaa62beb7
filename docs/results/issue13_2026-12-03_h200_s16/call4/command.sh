# session 16, call 4: pytest -m gpu on 33c477d (RetinaNet's GT loss keeps the box coder's weights on the device); loader_cost --sync-points on it (resident plain and cached, int8); then the int8 step row at 1024 warm views (plain, cached and online paired, 100 steps, --ahead) in turns: before the change (ab_before/, the package of 33c477d~1), then after
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call4.sh $OUT/command.sh
PYTHONPATH=/tmp/site:$PWD timeout 110 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
mkdir -p /tmp/r
PYTHONPATH=/tmp/site:$PWD timeout 90 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lc --dtype int8 --rounds 1 --steps 10 --sync-points --sync-steps 5 --variants resident_plain,resident_cached 2>&1 | grep -v "USDT\|_warn_once\|Warning\|_sync_debug" | tail -8 | tee $OUT/sync.txt
for turn in 1_before 2_after; do
  if [ ${turn#*_} = before ]; then root=$PWD/ab_before; else root=$PWD; fi
  PYTHONPATH=/tmp/site:$root timeout 115 python3 $root/bench/cached_step.py --out /tmp/r/step_$turn --work /tmp/cs --pairs x101-r50 --sizes 1024 --no-cold --dtypes int8 --steps 100 --block 10 --rate-views 8 --disk-mb 16 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 100 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tail -3 | cut -c1-300 | tee -a $OUT/turns.txt
  echo "turn $turn done $(date -u +%T)" | tee -a $OUT/turns.txt
done
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
