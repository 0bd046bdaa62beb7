# run as: SEEDS= PT=1 AB=0 bash gpu_call1.sh
# session 35: pytest -m gpu on main's head (AB=0: alone; PT=0: skipped), then RESULTS 2g's pairs for the seeds in $SEEDS, whatever the card
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; { echo "# run as: SEEDS=$SEEDS PT=${PT:-1} AB=${AB:-1} bash gpu_call1.sh"; cat gpu_call1.sh; } > $OUT/command.sh
F="Warning\|USDT\|_warn_once"
if [ "${STEP:-0}" = 1 ] && grep -q H200 $OUT/gpu.txt; then  # STEP=1 on an H200: the step-target rows instead
  rm -rf /tmp/r /tmp/cs; mkdir -p /tmp/r
  timeout 555 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50,r50v2-r50 --sizes 128,1024,4096 --dtypes int8,int5,float16 --warm-only float16 --steps 100 --block 10 --rate-views 1024 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 500 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
  python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -8 $OUT/verdicts.txt
  python3 bench/gpu_hours.py /tmp/r/step/step.json --out /tmp/r/step/gpu_hours.json > /dev/null 2>&1
  tar -cf $OUT/r.tar -C /tmp r
  date -u >> $OUT/gpu.txt; exit 0
fi
S0=$(date +%s)
[ "${PT:-1}" = 1 ] && timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=15 tests > /tmp/gpu_tests_full.txt 2>&1; echo rc=$? >> /tmp/gpu_tests_full.txt; [ "${PT:-1}" = 1 ] && { tail -60 /tmp/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt; }
date -u >> $OUT/gpu.txt
[ "${AB:-1}" = 0 ] && exit 0  # AB=0: pytest alone
LEFT=$((570 - $(date +%s) + S0)); echo "left for the layout pairs: $LEFT s"
(while true; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader >> /tmp/smi.txt; sleep 15; done) &
rm -rf /tmp/claim /tmp/claim_out
timeout $LEFT python3 bench/frs_claim.py --out /tmp/claim_out --work /tmp/claim --gpus 1 --deadline $((LEFT - 25)) --teacher-epochs 24 --eval-every 12 --plan "b=$SEEDS b+cl=$SEEDS" --variant cl=train.channels_last=true 2>&1 | grep -v "$F" > $OUT/log.txt; tail -4 $OUT/log.txt | cut -c1-200
mkdir -p $OUT/claim; for f in summary.json logs.tgz; do cp /tmp/claim_out/$f $OUT/claim/ 2>/dev/null; done
python3 bench/layout_verdict.py /tmp/claim_out 2>&1 | tee -a $OUT/log.txt
date -u >> $OUT/gpu.txt; echo "GPU memory used, MiB, and utilisation, the 3 largest samples:" >> $OUT/gpu.txt; sort -n /tmp/smi.txt | tail -3 >> $OUT/gpu.txt
