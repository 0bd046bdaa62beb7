# session 12, call 1: pytest -m gpu on the new defaults, then teacher-cache with the recipe's defaults (write_processes auto, cuda_graphs on) against the eager pass, turns graphs eager eager graphs: R50-FPN v2 int8 and int5, X101 int8, under host_load
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
mkdir -p /tmp/res
tcr() { timeout $1 python3 bench/host_load.py --out /tmp/res/host_load_$2.json --by-write /tmp/res/tcr_$2.json -- \
  python3 bench/teacher_cache_rate.py --out /tmp/res/tcr_$2.json --work /tmp/tcr --teachers $2 --dtypes $3 \
  --images 1280 --variants graphs,bf16_cl,bf16_cl,graphs --no-pass-figures 2>&1 | grep -v Warning | tee -a $OUT/tcr.log
  tar -cf $OUT/tcr.tar -C /tmp/res .; }
tcr 170 r50v2 int8,int5
tcr 110 x101 int8
date -u >> $OUT/gpu.txt
