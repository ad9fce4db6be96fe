#!/bin/bash
# Acceptance check on an unseen THUMOS-like corpus (synthetic seed 2029), 2 CPU cores: baseline and wtal.
# From the repository root. PY: the interpreter; WORK: where the corpus, outputs and logs go.
# (Point PYTHONPATH at a copy of the code to keep edits from reaching a run under way.)
PY=${PY:-.venv/bin/python}
COPL="$PY -m copl_dist"
WORK=${WORK:-runs/acceptance-seed2029}
mkdir -p "$WORK"
[ -f "$WORK/data/annotations.json" ] || $COPL synth "$WORK/data" --preset thumos14 --seed 2029 > "$WORK/synth.log" 2>&1
for mode in baseline wtal; do
  command time -f "%e s wall, %M KB max RSS" $COPL run --data "$WORK/data" --out "$WORK/$mode" --mode $mode \
     --iterations 3 --epochs 40 --snippets 256 --seed 0 --no-progress > "$WORK/$mode.log" 2>&1
done
echo finished >> "$WORK/wtal.log"
