# session 30, call 3: pytest -m gpu on main e708687 (after this session's later changes: the cache's absolute annotation path, the writer's removal of a cache a bad image stopped before any view, strict COCO ids, the reader's missing-chunk names, distill's anchor and no-object warnings)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call5.sh $OUT/command.sh
timeout 190 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; echo rc=$? >> $OUT/gpu_tests_full.txt; tail -30 $OUT/gpu_tests_full.txt > $OUT/gpu_tests.txt; tail -3 $OUT/gpu_tests.txt
date -u >> $OUT/gpu.txt
