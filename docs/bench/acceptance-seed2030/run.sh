#!/bin/bash
# Session 3, second chain: the seed-2030 acceptance runs, then `copl bench quality --seeds 3`, both from
# the code snapshot /work/s3runs/code (= /work/accept5/code) so that edits cannot reach them mid-run.
cd /work/accept5
export PYTHONPATH=/work/accept5/code
PY="/work/main/.venv/bin/python -m copl_dist.cli"
[ -f /work/accept5/data/annotations.json ] || $PY synth /work/accept5/data --preset thumos14 --seed 2030 > /work/accept5/synth.log 2>&1
for mode in baseline wtal; do
  /usr/bin/time -f "%e s wall, %M KB max RSS" $PY run --data /work/accept5/data --out /work/accept5/$mode --mode $mode \
     --iterations 3 --epochs 40 --snippets 256 --seed 0 --no-progress > /work/accept5/$mode.log 2>&1
done
/usr/bin/time -f "%e s wall, %M KB max RSS" $PY run --data /work/accept5/data --out /work/accept5/utal --mode utal \
   --iterations 3 --epochs 40 --snippets 256 --seed 0 --workers 0 --set has.vote_last=10 --no-progress > /work/accept5/utal.log 2>&1
echo finished >> /work/accept5/utal.log
cd /work/s3runs
/usr/bin/time -f "%e s wall, %M KB max RSS" $PY bench quality --seeds 3 --out /work/s3runs/quality > /work/s3runs/quality.log 2>&1
echo finished >> /work/s3runs/quality.log
