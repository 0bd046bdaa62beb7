# session 19, call 2: pytest -m gpu with the fused FRS terms (Triton kernels) and the cached head channels-last on CUDA (both now the defaults); loader_cost, int8 and int5, in one process each: plain, cached (the new defaults), cached with the FRS terms in their PyTorch form (_nf), cached with the head contiguous and the PyTorch terms (_tnc_nf: this morning's step but the one-pass decode), the student channels-last (_cl) with and without the fused terms; profiles of resident_plain_sg and resident_cached_sg (int8, by device time)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; python3 -c "import triton; print('triton', triton.__version__)") > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests > $OUT/gpu_tests_full.txt 2>&1; tail -30 $OUT/gpu_tests_full.txt | tee $OUT/gpu_tests.txt | tail -4
F="Warning\|USDT\|_warn_once"
for d in int8 int5; do
  echo "== $d" >> $OUT/lc_log.txt
  timeout 130 python3 bench/loader_cost.py --out /tmp/lc/$d --work /tmp/lcw_$d --dtype $d --rounds 2 --steps 40 --variants resident_plain_sg,resident_cached_sg,resident_cached_sg_nf,resident_cached_sg_tnc_nf,resident_plain_sg_cl,resident_cached_sg_cl,resident_cached_sg_cl_nf 2>&1 | grep -v "$F" | tee -a $OUT/lc_log.txt | tail -16
done
echo "== profiles int8" >> $OUT/lc_log.txt
timeout 100 python3 bench/loader_cost.py --out /tmp/lc/prof --work /tmp/lcw_p --dtype int8 --rounds 1 --steps 10 --variants resident_plain_sg --profile --profile-sort cuda --profile-variants resident_plain_sg,resident_cached_sg 2>&1 | grep -v "$F" | tee -a $OUT/lc_log.txt | tail -3
tar -cf $OUT/lc.tar -C /tmp lc
date -u >> $OUT/gpu.txt
