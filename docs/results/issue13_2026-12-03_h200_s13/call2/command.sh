# session 13, call 2: the step through Trainer at 4096 cached views (2048 images, both views cached; an epoch is one view of each), int5, two blocks, SGD at lr 0.001 (the default since session 12, call 4 diverged at 0.01): now (ahead) / sync / mid_check / no_readback, X101 -> R50
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 480 python3 bench/trainer_step.py --out $OUT/trainer_step.json --work /tmp/trainer_step --images 2048 --dtype int5 --blocks 2 2>&1 | grep -v Warning | tee $OUT/trainer_step.log
date -u >> $OUT/gpu.txt
