# session 12, call 3: pytest -m gpu on the trainer that runs one step ahead, then the step through Trainer: now (ahead) / sync / mid_check / no_readback, X101 -> R50, int8
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
timeout 330 python3 bench/trainer_step.py --out $OUT/trainer_step.json --work /tmp/trainer_step 2>&1 | grep -v Warning | tee $OUT/trainer_step.log
date -u >> $OUT/gpu.txt
