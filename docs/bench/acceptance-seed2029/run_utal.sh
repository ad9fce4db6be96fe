#!/bin/bash
# Acceptance check of issue 2 on an unseen corpus (synthetic seed 2029), 2 CPU cores: COPL (UTAL).
# Runs a snapshot of the code (/work/accept4/code2) so that edits elsewhere cannot reach it mid-run;
# waits for the baseline and wtal runs so that the three do not share the two cores.
cd /work/accept4
while ! grep -q finished /work/accept4/wtal.log 2>/dev/null; do sleep 10; done
export PYTHONPATH=/work/accept4/code2
/usr/bin/time -f "%e s wall, %M KB max RSS" /work/main/.venv/bin/python -m copl_dist.cli run --data /work/accept4/data --out /work/accept4/utal --mode utal \
   --iterations 3 --epochs 40 --snippets 256 --seed 0 --workers 0 --set has.vote_last=10 --no-progress > /work/accept4/utal.log 2>&1
echo finished >> /work/accept4/utal.log
