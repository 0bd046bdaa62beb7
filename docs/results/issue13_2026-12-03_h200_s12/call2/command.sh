# session 12, call 2: the step through Trainer (now / mid_check / no_readback, X101 -> R50, int8), then longer teacher-cache writes with the defaults (5120 views, R50-FPN v2 int8 and int5, two turns) so the whole write nears the steady rate
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 250 python3 bench/trainer_step.py --out $OUT/trainer_step.json --work /tmp/trainer_step 2>&1 | grep -v Warning | tee $OUT/trainer_step.log
rm -rf /tmp/trainer_step; mkdir -p /tmp/res
timeout 260 python3 bench/host_load.py --out /tmp/res/host_load.json --by-write /tmp/res/tcr.json -- \
  python3 bench/teacher_cache_rate.py --out /tmp/res/tcr.json --work /tmp/tcr --teachers r50v2 --dtypes int8,int5 \
  --images 2560 --variants graphs,graphs --no-pass-figures 2>&1 | grep -v Warning | tee -a $OUT/tcr.log
tar -cf $OUT/tcr.tar -C /tmp/res .
date -u >> $OUT/gpu.txt
