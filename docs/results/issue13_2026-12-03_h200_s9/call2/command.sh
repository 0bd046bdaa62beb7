# call 2: pytest -m gpu, then teacher-cache old vs new library (ABBA), default pass, both teachers
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -6 | tee $OUT/gpu_tests.txt
mkdir -p /tmp/old && tar -xf ab_old.tar -C /tmp/old
i=0
for turn in old new new old; do
  i=$((i+1)); lib=$PWD; [ $turn = old ] && lib=/tmp/old
  echo "== turn $i $turn $(date -u +%T)" | tee -a $OUT/tcr.log
  PYTHONPATH=/tmp/site:$lib timeout 110 python3 bench/teacher_cache_rate.py --out $OUT/tcr_${i}_${turn}.json \
    --work /tmp/tcr --teachers r50v2,x101 --dtypes int8,int5 --images 768 --variants bf16_cl --no-pass-figures 2>&1 \
    | grep -v Warning | tail -6 | tee -a $OUT/tcr.log
done
date -u >> $OUT/gpu.txt
