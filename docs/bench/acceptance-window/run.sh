#!/bin/bash
# COPL (UTAL) on the two held-out acceptance corpora (synthetic seeds 2029 and 2030) with every
# default: no --workers, no has.vote_last (the voting window from alpha). Compared with the
# acceptance runs' `--workers 0 --set has.vote_last=10` by compare.py beside this script. The
# weakly supervised and baseline rows: MODES="wtal baseline"; docs/bench/inference/rescore.py then
# scores every teacher under both inference settings.
# From the repository root. PY: the interpreter; WORK: corpora, outputs and logs.
PY=${PY:-.venv/bin/python}
COPL="$PY -m copl_dist"
WORK=${WORK:-runs/acceptance-window}
mkdir -p "$WORK"
# MODES: the modes run (utal, wtal, baseline); each writes $WORK/MODE-SEED and its log.
for seed in 2029 2030; do
  [ -f "$WORK/data-$seed/annotations.json" ] || $COPL synth "$WORK/data-$seed" --preset thumos14 --seed $seed > "$WORK/synth-$seed.log" 2>&1
  for mode in ${MODES:-utal}; do
    command time -f "%e s wall, %M KB max RSS" $COPL run --data "$WORK/data-$seed" --out "$WORK/$mode-$seed" --mode $mode \
       --iterations 3 --epochs 40 --snippets 256 --seed 0 --no-progress > "$WORK/$mode-$seed.log" 2>&1
    echo finished >> "$WORK/$mode-$seed.log"
  done
done
