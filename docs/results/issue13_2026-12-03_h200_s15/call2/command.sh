# session 15, call 2: pytest -m gpu on the one-copy span (7290a74); then bench/loader_cost.py --clocked, fp16 and int8: the plain and cached steps on resident batches and through the loader (workers holding their buffers), two rounds, with the host ms per step in each region of the FRS side timed by perf_counter (no profiler), and the span's A/B (resident_cached_pertensor)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 110 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
mkdir -p /tmp/lc
for d in float16 int8; do
  timeout 190 python3 bench/loader_cost.py --out /tmp/lc/lc_$d --work /tmp/lc_$d --dtype $d --rounds 2 --steps 40 --clocked \
    --variants resident_plain,resident_cached,resident_cached_pertensor,loader_plain,loader_cached,loader_cached_gt \
    2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee /tmp/lc/lc_$d.log | tail -32
done
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
