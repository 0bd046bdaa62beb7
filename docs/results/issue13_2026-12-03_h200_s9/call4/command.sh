# call 4: the cached step against the plain one with the device prefetcher (graphs A/B), x101-r50, int8/int5
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt
timeout 330 python3 bench/cached_step.py --out $OUT/step --work /tmp/cs --pairs x101-r50 --sizes 128,4096 \
  --dtypes int8,int5 --steps 40 --block 10 --rate-views 256 --disk-mb 64 --no-zarr-row --worker-sweep "" \
  --graphs-ab --budget-s 190 2>&1 | grep -v Warning | tee $OUT/step.log | tail -5
date -u >> $OUT/gpu.txt
