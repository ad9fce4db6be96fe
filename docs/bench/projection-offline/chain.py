import sys, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA
from copl_dist.cluster.videos import cluster_videos
from copl_dist.data.corpus import Corpus
from copl_dist.run import driver as P
run = Path(sys.argv[1])
corpus = Corpus.open(run / "corpus")
st = [torch.load(run / "state" / f"iteration-{k}.pt", weights_only=False) for k in range(3)]
ids = list(st[0]["votes"].keys())
y = P.primary_labels(corpus, ids)
def n(v): return v / np.linalg.norm(v, axis=-1, keepdims=True)
F0 = P.initial_features(corpus, ids, "novelty", 20.0)
feats = [F0] + [s["next_features"].numpy() for s in st[:2]]
for seed in range(4):
    lab, sc, mask = cluster_videos(F0, 20, seed, 0.0, True)
    out = [nmi(y, lab)]
    for k in (1, 2):
        lda = LDA(solver="eigen", shrinkage="auto").fit(feats[k][mask], lab[mask])
        lab, sc, mask = cluster_videos(n(lda.transform(feats[k])).astype(np.float32), 20, seed, 0.0, True)
        out.append(nmi(y, lab))
    print(seed, " ".join(f"{v:.3f}" for v in out), "P", mask.sum())
