# session 37, call 2 on the same warm H200 right after call 1: the first two lines of gpu_call1.sh (the wheels, the environment), then
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8
python3 bench/teacher_cache_rate.py --out $OUT/tcr.json --work /tmp/tcr3 --teachers r50v2 --dtypes int8,int5 --images 2048 --variants graphs --no-pass-figures
