# session 19, call 3: at COCO's classification width (--classes 80, the benches' new default: 720 logits per position): loader_cost int8 A/B (the fused FRS terms and the channels-last cached head, the default, against the PyTorch terms (_nf) and against both off (_tnc_nf); the student channels-last (_cl)); then the int8 and int5 rows of the step target (128, 1024, 4096 views, warm and cold; plain, cached and online paired, 100 steps, --ahead)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 150 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 2 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_nf,resident_cached_sg_tnc_nf,resident_plain_sg_cl,resident_cached_sg_cl,resident_cached_sg_cl_nf 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | tail -16
timeout 390 python3 bench/cached_step.py --out /tmp/r/step --work /tmp/cs --classes 80 --pairs x101-r50 --sizes 128,1024,4096 --dtypes int8,int5 --steps 100 --block 10 --rate-views 256 --disk-mb 256 --no-zarr-row --worker-sweep "" --online-paired --ahead --budget-s 350 2>&1 | grep -v "$F" | tee $OUT/step_log.txt | tail -2 | cut -c1-200
python3 bench/cache_verdicts.py /tmp/r/step/step.json 2>&1 | tail -40 > $OUT/verdicts.txt; tail -5 $OUT/verdicts.txt
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
