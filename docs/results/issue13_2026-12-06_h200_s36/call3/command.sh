python3 bench/teacher_cache_rate.py --out $OUT/tcr.json --work /tmp/tcr --teachers r50v2 --dtypes int8,int5 --images 1024 --variants graphs,graphs --no-pass-figures
