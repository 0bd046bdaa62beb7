# call 1: pytest -m gpu (with a red check of the prefetcher), then teacher-cache old vs new library (ABBA)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
cp frs_cli/data/prefetch.py /tmp/pf.bak
sed -i 's/t.record_stream(current)/pass/' frs_cli/data/prefetch.py
echo "red check: DevicePrefetcher without record_stream" >> $OUT/gpu_tests.txt
timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py -k prefetcher 2>&1 | tail -4 >> $OUT/gpu_tests.txt
cp /tmp/pf.bak frs_cli/data/prefetch.py
mkdir -p /tmp/old && tar -xf ab_old.tar -C /tmp/old
i=0
for turn in old new new old; do
  i=$((i+1)); lib=$PWD; [ $turn = old ] && lib=/tmp/old
  echo "== turn $i $turn $(date -u +%T)" | tee -a $OUT/tcr.log
  PYTHONPATH=/tmp/site:$lib timeout 130 python3 bench/teacher_cache_rate.py --out $OUT/tcr_${i}_${turn}.json \
    --work /tmp/tcr --teachers r50v2,x101 --dtypes int8,int5 --images 1024 --no-pass-figures 2>&1 | tail -8 | tee -a $OUT/tcr.log
done
date -u >> $OUT/gpu.txt
