#!/bin/bash
# Acceptance check of issue 2 on an unseen corpus (synthetic seed 2029), 2 CPU cores: baseline and wtal.
cd /work/accept4
export PYTHONPATH=/work/accept4/code
PY="/work/main/.venv/bin/python -m copl_dist.cli"
[ -f /work/accept4/data/annotations.json ] || $PY synth /work/accept4/data --preset thumos14 --seed 2029 > /work/accept4/synth.log 2>&1
for mode in baseline wtal; do
  /usr/bin/time -f "%e s wall, %M KB max RSS" $PY run --data /work/accept4/data --out /work/accept4/$mode --mode $mode \
     --iterations 3 --epochs 40 --snippets 256 --seed 0 --no-progress > /work/accept4/$mode.log 2>&1
done
echo finished >> /work/accept4/wtal.log
