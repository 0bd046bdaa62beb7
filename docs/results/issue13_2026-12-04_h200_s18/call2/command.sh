# session 18, call 2: pytest -m gpu (the graphed step's test compared in float32 and bf16); then loader_cost's variants with and without the step as one CUDA graph (_sg), batches resident and through the loader, int8, 2 rounds of 40 steps, each step split into wait / copy / issue (host) / tail (device); and a profile of loader_plain_sg
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -8
timeout 300 python3 bench/loader_cost.py --out /tmp/lc --work /tmp/lcw --dtype int8 --rounds 2 --steps 40 --variants resident_plain,resident_plain_sg,resident_cached,resident_cached_sg,loader_plain,loader_plain_sg,loader_cached,loader_cached_sg --profile --profile-variants loader_plain_sg,resident_plain_sg 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/lc_log.txt | tail -22
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
