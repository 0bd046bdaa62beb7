# call 3: teacher-cache A/B of four library versions in one run (ABDDBA + C once), int8, both teachers
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc) > $OUT/gpu.txt
(cat commit.txt; echo "A=2295bc0 B=96a7820 C=0a75a4f D=working tree (threaded shard-file writes)") > $OUT/commit.txt
for v in a b c; do mkdir -p /tmp/lib_$v && tar -xf ab_$v.tar -C /tmp/lib_$v; done
mkdir -p /tmp/res; i=0
for turn in a b d d b a c; do
  i=$((i+1)); lib=$PWD; [ $turn != d ] && lib=/tmp/lib_$turn
  echo "== turn $i $turn $(date -u +%T)" | tee -a $OUT/tcr.log
  PYTHONPATH=/tmp/site:$lib timeout 90 python3 bench/teacher_cache_rate.py --out /tmp/res/tcr_${i}_${turn}.json \
    --work /tmp/tcr --teachers r50v2,x101 --dtypes int8 --images 640 --variants bf16_cl --no-pass-figures 2>&1 \
    | grep -v Warning | tail -3 | tee -a $OUT/tcr.log
  mkdir -p /tmp/res; tar -cf $OUT/tcr.tar -C /tmp/res . 2>/dev/null
done
date -u >> $OUT/gpu.txt
