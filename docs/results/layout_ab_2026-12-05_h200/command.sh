# session 23, call 3: train.channels_last's accuracy from scratch against the NCHW run's, within one run: the claim bench's student alone (a) and FRS from the cache (b), each with and without train.channels_last, the same seeds
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call3.sh $OUT/command.sh
timeout 570 python3 bench/frs_claim.py --out $OUT/claim --work /tmp/claim --gpus 1 --deadline 540 --teacher-epochs 24 --eval-every 12 --plan "a=0,1,2,3 a+cl=0,1,2,3 b=0,1 b+cl=0,1" --variant cl=train.channels_last=true 2>&1 | grep -v "Warning\|_warn_once" > $OUT/claim_log.txt; tail -16 $OUT/claim_log.txt | cut -c1-220
date -u >> $OUT/gpu.txt
