#!/bin/bash
# Acceptance check on an unseen THUMOS-like corpus (synthetic seed 2029), 2 CPU cores: COPL (UTAL).
# From the repository root, beside run_bw.sh: waits for its baseline and wtal runs so that the three
# do not share the two cores. PY: the interpreter; WORK: as in run_bw.sh.
PY=${PY:-.venv/bin/python}
COPL="$PY -m copl_dist"
WORK=${WORK:-runs/acceptance-seed2029}
while ! grep -q finished "$WORK/wtal.log" 2>/dev/null; do sleep 10; done
command time -f "%e s wall, %M KB max RSS" $COPL run --data "$WORK/data" --out "$WORK/utal" --mode utal \
   --iterations 3 --epochs 40 --snippets 256 --seed 0 --workers 0 --set has.vote_last=10 --no-progress > "$WORK/utal.log" 2>&1
echo finished >> "$WORK/utal.log"
