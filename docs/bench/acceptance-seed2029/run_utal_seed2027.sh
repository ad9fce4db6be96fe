#!/bin/bash
# COPL (UTAL) with the default cluster.project=lda on the seed-2027 THUMOS-like corpus, 2 CPU cores
# (docs/bench/acceptance-seed2027-utal-project-lda-metrics.json). From the repository root;
# WORK holds the corpus made by `copl synth WORK/data --preset thumos14 --seed 2027`.
PY=${PY:-.venv/bin/python}
COPL="$PY -m copl_dist"
WORK=${WORK:-runs/acceptance-seed2027}
command time -f "%e s wall, %M KB max RSS" $COPL run --data "$WORK/data" --out "$WORK/utal-proj" --mode utal \
   --iterations 3 --epochs 40 --snippets 256 --seed 0 --workers 0 --set has.vote_last=10 --no-progress > "$WORK/utal-proj.log" 2>&1
echo finished >> "$WORK/utal-proj.log"
