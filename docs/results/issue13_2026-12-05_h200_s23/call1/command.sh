# session 22 plan, call 1: pytest -m gpu on branch gpu-pending (rebased on main with multi-scale views): the packed decode's one check of whole groups, graph_frs requiring graph_targets' tensors, KernelCheck shared by the fused modules, the two-scale cache written on the GPU and distilled with CUDA graphs (tests/test_multiscale.py); main's GPU-touching changes of session 21 (dist.check_device with cuda:N, step shares from HostCopy.ready, FRSObjective family alpha/beta, atomic_save through a file); then a short GPU teacher training on --device cuda:0 whose logged img_s is compared with its wall time
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 260 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
rm -rf /tmp/d /tmp/t; python3 -m frs_cli data synth /tmp/d --train 256 --val 16 --size 128 > /dev/null 2>&1
T0=$(date +%s.%N); timeout 120 python3 -m frs_cli train -p pipelines/demo.toml --role teacher --out /tmp/t --set data.root=/tmp/d --set teacher_train.epochs=3 --device cuda:0 --no-eval > $OUT/rates_log.txt 2>&1; T1=$(date +%s.%N)
python3 -c "import json,statistics as s; r=[json.loads(l) for l in open('/tmp/t/metrics.jsonl') if 'img_s' in l]; print('wall', round($T1-$T0,1), 's; steps', len(r), 'median img_s', round(s.median(x['img_s'] for x in r),1), 'max', round(max(x['img_s'] for x in r),1), 'images', 3*256)" | tee -a $OUT/rates_log.txt
date -u >> $OUT/gpu.txt
