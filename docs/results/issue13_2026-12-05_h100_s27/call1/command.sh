# session 27, call 1: pytest -m gpu on main (first GPU run since session 23: sessions 25-27 changed GPU-exercised code, among them feature_loss detaching the teacher on the fused path, the fused terms' new tiles and 2-D forward accumulator, distill.feature_beside); the fused terms' device time, new kernels against the earlier ones; loader_cost int8 at 80 classes: the earlier kernels (_ot) and the feature term beside the student's head (_fb) against the defaults, cached and online
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; echo rc=$? >> $OUT/gpu_tests_full.txt; tail -40 $OUT/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
timeout 60 python3 bench/fused_terms.py --out $OUT/fused_terms.json --reps 20 --blocks product,32x64x4 2>&1 | grep -v "$F" | tee $OUT/fused_terms_log.txt | tail -16
timeout 240 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 3 --warmup 24 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_ot,resident_cached_sg_fb,resident_online_sg,resident_online_sg_ot,resident_online_sg_fb 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | grep "^round" | cut -c1-150
cp /tmp/r/lc/loader_cost.json $OUT/ 2>/dev/null
date -u >> $OUT/gpu.txt
