# session 20, call 1: pytest -m gpu on the fused kernels' self-check and the folded loss kernels; the parts of the cached step at COCO's classification width (step_breakdown --classes 80); loader_cost int8 at 80 classes with and without cuDNN's benchmark mode
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 160 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
timeout 130 python3 bench/step_breakdown.py --out /tmp/r/bd --work /tmp/bdw --classes 80 2>&1 | grep -v "$F" | tee $OUT/bd_log.txt | tail -40
tar -cf $OUT/r.tar -C /tmp r
timeout 200 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 2 --warmup 24 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_plain_sg_cb,resident_cached_sg_cb 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | tail -12
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
