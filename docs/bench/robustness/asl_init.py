"""ASL's selection loop on a small base-cell corpus: the snippet AUC of its two actionness heads
after 0 and 15 epochs, for three initialisations and two learning rates (a supervised linear probe
on the same snippets for scale). Run from the repository root:

    python docs/bench/robustness/asl_init.py > docs/bench/robustness/asl_init.txt
"""

import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from copl_dist.data.formats import import_dataset
from copl_dist.data.synth_i3d import make_i3d_like
from copl_dist.method.asl import train_asl
from copl_dist.method.metrics import snippet_mask

root = Path(tempfile.mkdtemp())
data = make_i3d_like(root / "d", "base", train_videos=80, test_videos=20, classes=6, seed=2, duration_scale=0.5)
corpus = import_dataset(data, root / "c")
train, test = corpus.video_ids("validation"), corpus.video_ids("test")
labels = np.zeros((len(train), len(corpus.classes)), np.float32)
for i, v in enumerate(train):
    for s in corpus.segments(v):
        labels[i, corpus.classes.index(s.label)] = 1


def snippets(ids):
    x = np.concatenate([corpus.features(v) for v in ids])
    y = np.concatenate([snippet_mask([(s.start_s, s.end_s) for s in corpus.segments(v)], corpus.record(v).duration_s,
                                     len(corpus.features(v))) for v in ids])
    return x, y


xtr, ytr = snippets(train)
xte, yte = snippets(test)
probe = LogisticRegression(max_iter=300, C=0.1).fit(xtr, ytr)
print(f"corpus: base cell, 80 / 20 videos, 6 classes, seed 2, duration scale 0.5; {ytr.mean():.0%} action snippets")
print(f"supervised linear probe, snippet AUC on the test videos: {roc_auc_score(yte, probe.decision_function(xte)):.3f}")
print("lr      init  epochs  AUC A_rgb  AUC A_flow")
feats = [corpus.features(v) for v in train]
for lr in (1e-3, 1e-4):
    for seed in range(3):
        for epochs in (0, 15):
            net = train_asl(feats, labels, epochs, lr=lr, snippets=64, batch=8, seed=seed)
            with torch.no_grad():
                _, a_rgb, a_flow = net(torch.from_numpy(xte)[None])
            print(f"{lr:<7g} {seed:>4}  {epochs:>6}  {roc_auc_score(yte, a_rgb[0].numpy()):9.3f}  {roc_auc_score(yte, a_flow[0].numpy()):10.3f}",
                  flush=True)
