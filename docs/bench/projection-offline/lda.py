import sys, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA
from copl_dist.cluster.videos import cluster_videos
from copl_dist.data.corpus import Corpus
from copl_dist.run import driver as P
run = Path(sys.argv[1]); g = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
corpus = Corpus.open(run / "corpus")
st = [torch.load(run / "state" / f"iteration-{k}.pt", weights_only=False) for k in range(3)]
ids = list(st[0]["votes"].keys())
y = P.primary_labels(corpus, ids)
def n(v): return v / np.linalg.norm(v, axis=-1, keepdims=True)
def cl(F, s=0): return cluster_videos(np.asarray(F, np.float32), 20, s, 0.0, True)
F0 = P.initial_features(corpus, ids, "novelty", g)
feats = [F0] + [s["next_features"].numpy() for s in st[:2]]
for k in range(3):
    F = feats[k]
    lab, sc, mask = cl(F)
    print(f"iter {k}: plain {nmi(y, lab):.3f}", end="")
    if k > 0:
        pl = st[k-1]["labels"].numpy(); pm = st[k-1]["mask"].numpy().astype(bool)
        for shr in ["auto", 0.5]:
            lda = LDA(solver="eigen", shrinkage=shr).fit(F[pm], pl[pm])
            Z = n(lda.transform(F))
            lab2 = cl(Z)[0]
            pred = lda.predict(F)
            print(f" | lda{shr} clust {nmi(y, lab2):.3f} predict {nmi(y, pred):.3f}", end="")
    print()
