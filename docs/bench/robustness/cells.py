"""What each cell of the second generator looks like, measured on one small corpus per cell (60 / 20
videos, 10 classes, seed 1): action share and actions per video, the feature statistics that make
it I3D-like, and how separable it is without the method: NMI of k-means on L2-normalised video mean
features (what clustering sees before HAS) and on action-only means (what HAS aims for), and the
snippet AUC of a supervised linear probe for action vs background. Run from the repository root:

    python docs/bench/robustness/cells.py > docs/bench/robustness/cells.txt
"""

import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score

from copl_dist.data.synth_i3d import CELLS, make_i3d_like

root = Path(tempfile.mkdtemp())
print("cell              share  actions  zero share  dim-std p90/p10  lag-1 corr  NMI mean  NMI action-mean  probe AUC")
for name in CELLS:
    out = make_i3d_like(root / name, name, train_videos=60, test_videos=20, classes=10, seed=1)
    db = json.loads((out / "annotations.json").read_text())["database"]
    means, action_means, labels, xs, ys, shares, counts, lag1 = [], [], [], [], [], [], [], []
    for vid, info in db.items():
        x = np.load(out / "features" / f"{vid}.npy")
        centres = (np.arange(len(x)) + 0.5) * info["duration"] / len(x)
        m = np.zeros(len(x), bool)
        for a in info["annotations"]:
            m |= (centres >= a["segment"][0]) & (centres < a["segment"][1])
        shares.append(m.mean())
        counts.append(len(info["annotations"]))
        labels.append(info["annotations"][0]["label"])
        means.append(x.mean(0))
        action_means.append(x[m].mean(0) if m.any() else x.mean(0))
        xs.append(x[::3])
        ys.append(m[::3])
        c = x - x.mean(0)
        lag1.append((c[1:] * c[:-1]).sum() / (c * c).sum())

    def nmi(features):
        f = np.asarray(features)
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        return normalized_mutual_info_score(labels, KMeans(10, n_init=5, random_state=0).fit_predict(f))

    x, y = np.concatenate(xs), np.concatenate(ys)
    half = len(x) // 2
    auc = roc_auc_score(y[half:], LogisticRegression(max_iter=300, C=0.1).fit(x[:half], y[:half]).decision_function(x[half:]))
    sd = x.std(0)
    print(f"{name:16s} {np.mean(shares):6.2f} {np.mean(counts):8.1f} {(x < 0.03).mean():11.2f} "
          f"{np.percentile(sd, 90) / np.percentile(sd, 10):16.1f} {np.mean(lag1):11.2f} {nmi(means):9.2f} "
          f"{nmi(action_means):16.2f} {auc:10.3f}", flush=True)
