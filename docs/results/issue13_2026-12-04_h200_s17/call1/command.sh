# session 17, call 1: pytest -m gpu on 1e7cfb6 (code of 80f3299: GIoU and GFL losses without host waits, the cached-step graphs sync test, _pinned_to); then the int8 step row at 1024 warm views with --hostcopy-ab (plain, cached and online paired, 100 steps, --ahead): each step again with the GT loss's box coding copied from the host at every step, as before 33c477d
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests > $OUT/gpu_tests_full.txt 2>&1; tail -6 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt
mkdir -p /tmp/r
timeout 330 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs_ab --pairs x101-r50 --sizes 1024 --no-cold --dtypes int8 --steps 100 --block 10 --rate-views 8 --disk-mb 16 --no-zarr-row --worker-sweep "" --online-paired --ahead --hostcopy-ab --budget-s 300 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/step_log.txt | tail -4 | cut -c1-300
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -12 | tee $OUT/verdicts.txt
python3 bench/cache_verdicts.py /tmp/r/step/step.json --hostcopy 2>&1 | tail -12 | tee $OUT/verdicts_hostcopy.txt
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
