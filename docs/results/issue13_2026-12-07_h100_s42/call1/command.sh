# session 42, call 1: where a fresh machine's first teacher-cache write spends its writer exits (diag hooks; even-index workers end with os._exit after flushing, odd ones exit normally), R50-FPN v2 int8 then int5, 4096 views
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; nproc --all; df -h /tmp | tail -1; uptime) > $OUT/gpu.txt
cp commit.txt $OUT/commit.txt; cp gpu_call14.sh $OUT/command.sh
DIAG_DIR=/tmp/diag1 DIAG_FAST_EXIT=1 timeout 220 python3 -c "
import sys, runpy, diag_exit_hooks as d; d.install()
sys.argv=['bench/teacher_cache_rate.py','--out','$OUT/tcr_diag.json','--work','/tmp/tcr14','--teachers','r50v2','--dtypes','int8,int5','--images','2048','--variants','graphs','--no-pass-figures']
runpy.run_path('bench/teacher_cache_rate.py', run_name='__main__')" 2>&1 | grep -v "Warning\|USDT\|_warn_once" | tee $OUT/log.txt | tail -4
python3 diag_exit_summary.py /tmp/diag1 > $OUT/diag_summary.txt 2>&1; head -c 12000 $OUT/diag_summary.txt
tar czf $OUT/diag_raw.tgz -C /tmp diag1
python3 bench/tcr_turns.py $OUT/tcr_diag.json > $OUT/verdicts.txt 2>&1; tail -5 $OUT/verdicts.txt
date -u >> $OUT/gpu.txt
