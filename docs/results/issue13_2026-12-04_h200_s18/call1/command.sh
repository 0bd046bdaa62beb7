# session 18, call 1: pytest -m gpu on the whole-step CUDA graphs (train.cuda_graphs, StepGraphs); then the 1024-view warm rows of int8, int5 and fp16 with --step-graphs-ab (plain, cached and online paired, each also eager, 100 steps, --ahead)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -8
mkdir -p /tmp/r
timeout 330 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs_ab --pairs x101-r50 --sizes 1024 --no-cold --dtypes int8,int5,float16 --steps 100 --block 10 --rate-views 8 --disk-mb 16 --no-zarr-row --worker-sweep "" --online-paired --ahead --step-graphs-ab --budget-s 280 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/step_log.txt | tail -4 | cut -c1-300
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -14 | tee $OUT/verdicts.txt
python3 bench/cache_verdicts.py /tmp/r/step/step.json --eager 2>&1 | tail -14 | tee $OUT/verdicts_eager.txt
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
