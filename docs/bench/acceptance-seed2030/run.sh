#!/bin/bash
# Acceptance check on an unseen THUMOS-like corpus (synthetic seed 2030), 2 CPU cores: baseline,
# wtal and COPL (UTAL) one after the other, then `copl bench quality --seeds 3` (docs/bench/quality-2cpu/).
# From the repository root. PY: the interpreter; WORK: the corpus, outputs and logs; QOUT: the benchmark's
# output. (Point PYTHONPATH at a copy of the code to keep edits from reaching a run under way.)
PY=${PY:-.venv/bin/python}
COPL="$PY -m copl_dist"
WORK=${WORK:-runs/acceptance-seed2030}
QOUT=${QOUT:-runs/quality}
mkdir -p "$WORK" "$(dirname "$QOUT")"
[ -f "$WORK/data/annotations.json" ] || $COPL synth "$WORK/data" --preset thumos14 --seed 2030 > "$WORK/synth.log" 2>&1
for mode in baseline wtal; do
  command time -f "%e s wall, %M KB max RSS" $COPL run --data "$WORK/data" --out "$WORK/$mode" --mode $mode \
     --iterations 3 --epochs 40 --snippets 256 --seed 0 --no-progress > "$WORK/$mode.log" 2>&1
done
command time -f "%e s wall, %M KB max RSS" $COPL run --data "$WORK/data" --out "$WORK/utal" --mode utal \
   --iterations 3 --epochs 40 --snippets 256 --seed 0 --workers 0 --set has.vote_last=10 --no-progress > "$WORK/utal.log" 2>&1
echo finished >> "$WORK/utal.log"
command time -f "%e s wall, %M KB max RSS" $COPL bench quality --seeds 3 --out "$QOUT" > "$QOUT.log" 2>&1
echo finished >> "$QOUT.log"
