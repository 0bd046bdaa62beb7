# session 16, call 1: pytest -m gpu on valid-in-graph merged with main (the graphed FRS terms compute the valid positions in the graph from the image sizes); then bench/loader_cost.py --clocked, fp16 and int8, on this branch and on main's package (ab_main/, from git archive main), the same variants and rounds, alternating the packages per dtype
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
PYTHONPATH=/tmp/site:$PWD timeout 110 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
mkdir -p /tmp/lc
for d in float16 int8; do
  for pkg in branch main; do
    if [ $pkg = main ]; then root=$PWD/ab_main; else root=$PWD; fi
    PYTHONPATH=/tmp/site:$root timeout 100 python3 $root/bench/loader_cost.py --out /tmp/lc/lc_${d}_$pkg --work /tmp/lc_${d}_$pkg --dtype $d --rounds 2 --steps 40 --clocked \
      --variants resident_cached,loader_plain,loader_cached \
      2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee /tmp/lc/lc_${d}_$pkg.log | tail -22
  done
done 2>&1 | tee $OUT/lc_tail.txt
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
