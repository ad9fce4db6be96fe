#!/bin/bash
# H200 check 1, the script as it ran (CAP=450, from the repository root; $OUT: the folder whose files
# come back from the GPU machine). Its outputs are the seed2028-*, quality-eq5-uncentred and
# cluster-1m-timeout files here.
# One device check (GPU machine: torch, pyarrow, sklearn there; ray, mlflow, faiss not).
# Results gather in $R (default r/) and are tarred into $OUT at the end (also when a time cap hits).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
R=${R:-r}; mkdir -p $R
PY=${PY:-python3}
C=${C:-"$PY -m copl_dist"}
CAP=${CAP:-460}
if [ -n "$SMALL" ]; then SYN="--videos 12 --classes 3"; EP=2; BN=3000; Q="--videos 6 --classes 3 --epochs 1 --snippets 16 --iterations 2 --duration-scale 0.15"
else SYN=""; EP=40; BN=1000000; Q=""; fi
T0=$(date +%s)
finish() { (cd "$(dirname "$R")" && find "$(basename "$R")" \( -name '*.log' -o -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.txt' -o -name '*.yaml' \) -size -5M | tar czf $OUT/results.tgz -T -); cp $R/summary.txt $OUT/ 2>/dev/null; }
trap finish EXIT
trap 'exit 1' TERM INT
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2
  $PY -c "import torch, numpy, sklearn, pyarrow; print('torch', torch.__version__, torch.cuda.get_device_name(), 'numpy', numpy.__version__, 'sklearn', sklearn.__version__, 'pyarrow', pyarrow.__version__)"; } > $R/env.txt 2>&1
# 1. the GPU tests
(OMP_NUM_THREADS=2 timeout $CAP $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py > $R/pytest_gpu.log 2>&1; echo "rc $?" >> $R/pytest_gpu.log) &
# 2. clustering at N = 1,000,000 (Nystrom on the CPUs; the kNN graph by torch on the GPU)
for p in nystrom knn; do
  (timeout $CAP $C bench cluster --n $BN --paths $p --backend torch --threads 4 --out $R/bench_cluster_$p > $R/bench_cluster_$p.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/bench_cluster_$p.log) &
done
# 3. bench quality, one process per seed, merged afterwards
for s in 0 1 2; do
  (OMP_NUM_THREADS=2 timeout $CAP $C bench quality --seeds 1 --first-seed $s $Q --out $R/quality_s$s > $R/quality_s$s.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/quality_s$s.log) &
done
# 4. an unseen THUMOS-like corpus (seed 2028), the acceptance schedule, each mode
$C synth $R/c2028 --preset thumos14 --seed 2028 $SYN > $R/synth.log 2>&1
echo "synth done at $(( $(date +%s) - T0 )) s" >> $R/synth.log
A="--data $R/c2028 --iterations 3 --epochs $EP --snippets 256 --seed 0 --workers 0 --no-progress --set tracking.enabled=false"
for spec in "utal:--mode utal --set has.vote_last=10" "utal_mean:--mode utal --set has.vote_last=10 --set has.init=mean" "wtal:--mode wtal" "baseline:--mode baseline"; do
  name=${spec%%:*}; flags=${spec#*:}
  (OMP_NUM_THREADS=2 timeout $(( CAP - $(date +%s) + T0 )) $C run $A $flags --out $R/$name > $R/$name.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/$name.log) &
done
wait
$C bench quality --merge $R/quality_s0 $R/quality_s1 $R/quality_s2 --out $R/quality > $R/quality_merge.log 2>&1
rm -rf $R/c2028 $R/*/corpus $R/bench_cluster_*/work $R/quality_s*/data-* $R/quality_s*/corpus-*
{ for n in utal utal_mean wtal baseline; do echo "== $n"; tail -12 $R/$n.log; done
  echo "== pytest"; tail -5 $R/pytest_gpu.log; echo "== bench cluster"; cat $R/bench_cluster_*.log
  echo "== quality"; tail -n 3 $R/quality_s*.log; cat $R/quality_merge.log; cat $R/env.txt; } > $R/summary.txt
