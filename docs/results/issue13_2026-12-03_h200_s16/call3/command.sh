# session 16, call 3: bench/loader_cost.py --sync-points, int8 and fp16: where the plain and the cached FRS steps (resident and through the loader) make the host wait for the device, 5 steps each under CUDA's sync debug mode, after 20 timed steps
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
mkdir -p /tmp/lc
for d in int8 float16; do
  timeout 140 python3 bench/loader_cost.py --out /tmp/lc/lc_$d --work /tmp/lc_$d --dtype $d --rounds 1 --steps 20 --sync-points --sync-steps 5 \
    --variants resident_plain,resident_cached,loader_plain,loader_cached,loader_cached_gt \
    2>&1 | grep -v "USDT\|_warn_once" | tee /tmp/lc/lc_$d.log | tail -60
done 2>&1 | tee $OUT/lc_tail.txt | cut -c1-400
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
