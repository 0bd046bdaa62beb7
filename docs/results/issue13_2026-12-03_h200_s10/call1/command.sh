# session 10, call 1: the writer side alone (write_side; a = c7a9b28, b = this commit), then every row of the step target with the prefetcher (x101-r50)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; PYTHONPATH=/tmp/site:$PWD python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
mkdir -p /tmp/a && tar -xf ab_a.tar -C /tmp/a
ws() { PYTHONPATH=/tmp/site:$1 timeout 60 python3 bench/write_side.py --work /tmp/ws --out $OUT/write_side_$2.json --dtypes int8 --batches 10 "${@:3}" 2>&1 | sed "s/^/$2 /" | tee -a $OUT/write_side.log; }
ws /tmp/a a1 --modes write_rows --processes 4
ws $PWD b1 --modes write_rows,zarr,crc,writev_shm,writev_private,writev_pinned --processes 1,4
ws /tmp/a a2 --modes write_rows --processes 4
ws $PWD b2 --modes write_rows --processes 4,8
export PYTHONPATH=/tmp/site:$PWD
timeout 440 python3 bench/cached_step.py --out $OUT/step --work /tmp/cs --pairs x101-r50 --sizes 128,1024,4096 \
  --dtypes int8,int5,float16 --warm-only float16 --steps 40 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row \
  --worker-sweep "" --graphs-ab --budget-s 350 2>&1 | grep -v Warning | tee $OUT/step.log | tail -3
date -u >> $OUT/gpu.txt
