#!/bin/bash
# H200 check 2, the script as it ran (CAP=195, from the repository root; $OUT as in check1.sh). Its outputs:
# quality.md/json, cluster-knn-250k.*, seed2028-utal-metrics.json, pytest-test_gpu.log.
# The GPU tests, bench quality, seed-2028 utal (cluster.project=none: the default of the code it ran),
# and the kNN graph by torch on the GPU at N = 250,000.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
R=${R:-r}; mkdir -p $R
PY=${PY:-python3}
C=${C:-"$PY -m copl_dist"}
CAP=${CAP:-200}
if [ -n "$SMALL" ]; then SYN="--videos 12 --classes 3"; EP=2; BN=3000; Q="--videos 6 --classes 3 --epochs 1 --snippets 16 --iterations 2 --duration-scale 0.15"
else SYN=""; EP=40; BN=250000; Q=""; fi
T0=$(date +%s)
finish() { (cd "$(dirname "$R")" && find "$(basename "$R")" \( -name '*.log' -o -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.txt' -o -name '*.yaml' \) -size -5M | tar czf $OUT/results.tgz -T -); cp $R/summary.txt $OUT/ 2>/dev/null; }
trap finish EXIT
trap 'exit 1' TERM INT
(OMP_NUM_THREADS=2 timeout $CAP $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py > $R/pytest_gpu.log 2>&1; echo "rc $?" >> $R/pytest_gpu.log) &
(timeout $CAP $C bench cluster --n $BN --paths knn --backend torch --threads 4 --out $R/bench_cluster_knn > $R/bench_cluster_knn.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/bench_cluster_knn.log) &
for s in 0 1 2; do
  (OMP_NUM_THREADS=2 timeout $CAP $C bench quality --seeds 1 --first-seed $s $Q --out $R/quality_s$s > $R/quality_s$s.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/quality_s$s.log) &
done
$C synth $R/c2028 --preset thumos14 --seed 2028 $SYN > $R/synth.log 2>&1
echo "synth done at $(( $(date +%s) - T0 )) s" >> $R/synth.log
(OMP_NUM_THREADS=3 timeout $(( CAP - $(date +%s) + T0 )) $C run --data $R/c2028 --iterations 3 --epochs $EP --snippets 256 --seed 0 --workers 0 --no-progress --set tracking.enabled=false --mode utal --set has.vote_last=10 --out $R/utal > $R/utal.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/utal.log) &
wait
$C bench quality --merge $R/quality_s0 $R/quality_s1 $R/quality_s2 --out $R/quality > $R/quality_merge.log 2>&1
rm -rf $R/c2028 $R/*/corpus $R/bench_cluster_*/work $R/quality_s*/data-* $R/quality_s*/corpus-*
{ echo "== utal"; tail -12 $R/utal.log; echo "== pytest"; tail -5 $R/pytest_gpu.log; echo "== bench cluster"; cat $R/bench_cluster_knn.log
  echo "== quality"; tail -n 3 $R/quality_s*.log; cat $R/quality_merge.log; } > $R/summary.txt
