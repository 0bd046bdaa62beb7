python3 bench/teacher_cache_rate.py --out $OUT/tcr.json --work /tmp/tcr2 --teachers r50v2,x101 --dtypes int8 --images 1024 --no-pass-figures
