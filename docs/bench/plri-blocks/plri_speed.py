"""Exact PLRI of 1,000 videos over all N columns (the scale path's re-computation of borderline
videos), before and after the column blocking of plri_scale._KernelSums, in one process.

    python docs/bench/plri-blocks/plri_speed.py 100000     # from the repository root, in .venv

"before" is plri_scale.py as of commit d58e411 (rows sized to hold all N columns: 55 rows a block
at N = 100,000, 5 at N = 1,000,000), read with `git show`; "after" is the working tree's.
"""

import importlib.util
import subprocess
import sys
import tempfile
import time

import numpy as np

from copl_dist.cluster import plri_scale as after
from copl_dist.bench.cluster import make_cluster_features

src = subprocess.run(["git", "show", "d58e411:copl_dist/plri_scale.py"], capture_output=True, text=True, check=True).stdout
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(src)
spec = importlib.util.spec_from_file_location("plri_before", f.name)
before = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before)

n = int(sys.argv[1])
X, truth = make_cluster_features(n, 2048, n_clusters=20, seed=0)
rows = np.sort(np.random.default_rng(0).choice(n, 1000, replace=False))
times = {"before": [], "after": []}
scores = {}
for rep in range(3):
    for name, mod in (("before", before), ("after", after)):
        t = time.perf_counter()
        scores[name] = mod.plri_scores_blocked(X, truth, 1.0, rows=rows, dtype=np.float32)
        times[name].append(time.perf_counter() - t)
med = {k: float(np.median(v)) for k, v in times.items()}
print(f"N={n}, 1,000 rows x {n} columns x 2048 dims, 3 repeats: before {med['before']:.2f} s, after {med['after']:.2f} s "
      f"(median), {med['before'] / med['after']:.2f}x; max |score difference| {np.abs(scores['before'] - scores['after']).max():.1e}")
