# session 19, call 1: pytest -m gpu on main + review-dedupe + student-channels-last + the one-pass decode; loader_cost A/B in one call, this tree against c89e519's frs_cli (ab_old/): int8 and int5, resident plain and cached through the step graphs, with the student (_cl) and the cached head (_tcl) channels-last; profiles of resident_cached_sg and resident_cached_sg_tcl (int8, by device time)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call1.sh $OUT/command.sh
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
F="Warning\|USDT\|_warn_once"
for d in int8 int5; do
  echo "== old (c89e519) $d" >> $OUT/lc_log.txt
  PYTHONPATH=/tmp/site:$PWD/ab_old timeout 90 python3 bench/loader_cost.py --out /tmp/lc/old_$d --work /tmp/lcw_old_$d --dtype $d --rounds 2 --steps 40 --variants resident_plain_sg,resident_cached_sg 2>&1 | grep -v "$F" | tee -a $OUT/lc_log.txt | tail -6
  echo "== new $d" >> $OUT/lc_log.txt
  timeout 120 python3 bench/loader_cost.py --out /tmp/lc/new_$d --work /tmp/lcw_new_$d --dtype $d --rounds 2 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_tcl,resident_plain_sg_cl,resident_cached_sg_cl,resident_cached_sg_cl_tcl 2>&1 | grep -v "$F" | tee -a $OUT/lc_log.txt | tail -14
done
echo "== profiles int8" >> $OUT/lc_log.txt
timeout 100 python3 bench/loader_cost.py --out /tmp/lc/prof --work /tmp/lcw_p --dtype int8 --rounds 1 --steps 10 --variants resident_cached_sg --profile --profile-sort cuda --profile-variants resident_cached_sg,resident_cached_sg_tcl 2>&1 | grep -v "$F" | tee -a $OUT/lc_log.txt | tail -3
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
