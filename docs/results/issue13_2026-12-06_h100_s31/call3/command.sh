# session 31, call 3: pytest -m gpu with the student's logits handed on as level_views (the head term's gradient added to the GT loss's in one tensor) and the fused backward writing a dense gradient for a gapped view; then loader_cost int8 at 80 classes, X101 -> R50, the step as one CUDA graph: plain, cached and online, each against _pl (the logits per level, as before)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; echo rc=$? >> $OUT/gpu_tests_full.txt; tail -40 $OUT/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
timeout 300 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 3 --warmup 24 --steps 40 --variants resident_plain_sg,resident_plain_sg_pl,resident_cached_sg,resident_cached_sg_pl,resident_online_sg,resident_online_sg_pl 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | grep "^round" | cut -c1-160
cp /tmp/r/lc/loader_cost.json $OUT/ 2>/dev/null
date -u >> $OUT/gpu.txt
