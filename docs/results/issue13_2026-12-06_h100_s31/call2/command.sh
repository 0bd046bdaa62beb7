# session 31, call 2: the diagnostic of call 1 again, its main guarded (spawned writer processes re-ran it), on main 33203e4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call2.sh $OUT/command.sh; cp tests/diag_layout.py $OUT/diag_layout.py.txt
timeout 280 python3 tests/diag_layout.py /tmp/dg 2>&1 | grep -v "USDT\|Warning" | tee $OUT/diag.txt | tail -30
tar -czf $OUT/dg.tgz -C /tmp dg
date -u >> $OUT/gpu.txt
