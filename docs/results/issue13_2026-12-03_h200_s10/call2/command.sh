# session 10, call 2: pytest -m gpu on this commit, then teacher-cache a (c7a9b28) against b (this commit) in turns a b b a, each turn writing with 4, then 8 writer processes
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import frs_cli.cache.checksum as c; print('crc32', c.IMPLEMENTATION)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
mkdir -p /tmp/a /tmp/res && tar -xf ab_a.tar -C /tmp/a
i=0
for turn in a b b a; do
  i=$((i+1)); lib=$PWD; [ $turn = a ] && lib=/tmp/a
  echo "== turn $i $turn $(date -u +%T)" | tee -a $OUT/tcr.log
  PYTHONPATH=/tmp/site:$lib timeout 110 python3 bench/teacher_cache_rate.py --out /tmp/res/tcr_${i}_${turn}.json \
    --work /tmp/tcr --teachers r50v2,x101 --dtypes int8 --images 640 --variants bf16_cl --no-pass-figures \
    --write-processes 4,8 2>&1 | grep -v Warning | tail -4 | tee -a $OUT/tcr.log
  tar -cf $OUT/tcr.tar -C /tmp/res .
done
date -u >> $OUT/gpu.txt
