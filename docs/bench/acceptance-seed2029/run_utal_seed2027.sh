#!/bin/bash
# Seed 2027 again with the code of session 3 (cluster.project=lda default), snapshot /work/accept4/code2.
cd /work/accept3
export PYTHONPATH=/work/accept4/code2
/usr/bin/time -f "%e s wall, %M KB max RSS" /work/main/.venv/bin/python -m copl_dist.cli run --data /work/accept3/data --out /work/accept3/utal-proj --mode utal \
   --iterations 3 --epochs 40 --snippets 256 --seed 0 --workers 0 --set has.vote_last=10 --no-progress > /work/accept3/utal-proj.log 2>&1
echo finished >> /work/accept3/utal-proj.log
