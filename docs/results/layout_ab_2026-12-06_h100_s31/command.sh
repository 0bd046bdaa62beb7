# session 31, call 6: four more seeds (5-8) of the FRS student from the cache, NCHW and channels-last (train.channels_last), the claim bench's teacher (24 epochs), one H100; session 23/24's A/B ran on an H200. 8 files back: gpu.txt, command.sh, commit.txt, log.txt, claim/{summary.json,logs.tgz,mask_stats.json,claim.toml}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call6.sh $OUT/command.sh
F="Warning\|_warn_once\|USDT"
timeout 430 python3 bench/frs_claim.py --out /tmp/claim_out --work /tmp/claim --gpus 1 --deadline 400 --teacher-epochs 24 --eval-every 12 --plan "b=5,6,7,8 b+cl=5,6,7,8" --variant cl=train.channels_last=true 2>&1 | grep -v "$F" > $OUT/log.txt; tail -12 $OUT/log.txt | cut -c1-200
mkdir -p $OUT/claim; for f in summary.json logs.tgz mask_stats.json claim.toml; do cp /tmp/claim_out/$f $OUT/claim/ 2>/dev/null; done; ls /tmp/claim_out
date -u >> $OUT/gpu.txt
