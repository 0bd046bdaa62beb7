# session 14, call 3: where the cached step's extra host time goes. bench/loader_cost.py with an fp16 cache: the plain and cached steps on resident batches and through the loader, each step's phases, and a profile of each variant with the host milliseconds in each labelled region
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
mkdir -p /tmp/lc
for d in float16; do
  timeout 150 python3 bench/loader_cost.py --out /tmp/lc/lc_$d --work /tmp/lc_$d --dtype $d --rounds 1 --steps 40 \
    --variants resident_plain,resident_cached,loader_plain,loader_cached,loader_cached_gt --profile \
    --profile-variants resident_plain,resident_cached,loader_plain,loader_cached 2>&1 | grep -v "Warning\|USDT" | tee /tmp/lc/lc_$d.log | tail -8
done
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
