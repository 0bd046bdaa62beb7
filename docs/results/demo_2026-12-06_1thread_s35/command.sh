OMP_NUM_THREADS=1 frs demo --out demo1t   # commit 338e07e, 2 CPU cores of an AMD EPYC virtual machine shared with other work, 2026-12-06
