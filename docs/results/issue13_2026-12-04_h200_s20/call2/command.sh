# session 20, call 2: pytest -m gpu with distill.teacher_beside; loader_cost int8 at 80 classes: the teacher's side beside the student's pass (on, _nb off) for the cached and the online step, the adapters channels-last (_acl); a device-time profile of the eager cached and plain steps
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
F="Warning\|USDT\|_warn_once"
timeout 170 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
timeout 330 python3 bench/loader_cost.py --out /tmp/r/lc --work /tmp/lcw --dtype int8 --classes 80 --rounds 2 --warmup 24 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_nb,resident_cached_sg_acl,resident_online_sg,resident_online_sg_nb --profile --profile-sort cuda --profile-variants resident_plain,resident_cached_eager 2>&1 | grep -v "$F" | tee $OUT/lc_log.txt | tail -16
tar -cf $OUT/r.tar -C /tmp r
date -u >> $OUT/gpu.txt
