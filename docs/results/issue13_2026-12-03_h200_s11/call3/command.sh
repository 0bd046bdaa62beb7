# session 11, call 3: R50-FPN v2 teacher-cache over 2560 views (2x call 2's), eager pass against CUDA graphs, 4 and 8 writer processes in turns 4 8 8 4, int8 and int5, under host_load
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)"; df -h /tmp | tail -1) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
mkdir -p /tmp/res
timeout 480 python3 bench/host_load.py --out /tmp/res/host_load.json --by-write /tmp/res/tcr.json -- \
  python3 bench/teacher_cache_rate.py --out /tmp/res/tcr.json --work /tmp/tcr --teachers r50v2 --dtypes int8,int5 \
  --images 1280 --variants bf16_cl,graphs --no-pass-figures --write-processes 4,8,8,4 2>&1 | grep -v Warning | tee $OUT/tcr.log
tar -cf $OUT/tcr.tar -C /tmp/res .
date -u >> $OUT/gpu.txt
