# session 17, call 5: pytest -m gpu on faf7b71 (one loader for the whole run: RunBatches); then bench/epoch_start.py: whole fit runs of 4 epochs (256 images, batch 8, 12 workers, 512/853 px), plain and cached int8 (X101 -> R50), one loader for the run against one every epoch, in two turns
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call5.sh $OUT/command.sh
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests > $OUT/gpu_tests_full.txt 2>&1; tail -3 $OUT/gpu_tests_full.txt
timeout 200 python3 bench/epoch_start.py --out $OUT/epoch_start.json --work /tmp/es 2>&1 | grep -v "Warning\|USDT\|_warn_once\|warn(" | tee $OUT/epoch_start_log.txt | tail -8 | cut -c1-400
date -u >> $OUT/gpu.txt
