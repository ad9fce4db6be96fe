import sys, numpy as np, warnings
warnings.simplefilter("ignore")
from sklearn.metrics import adjusted_rand_score as ari
from copl_dist.bench.cluster import make_cluster_features
from copl_dist.cluster.videos import cluster_videos
from copl_dist.cluster.scale import cluster_videos_scale
n=int(sys.argv[1]); dim=int(sys.argv[2])
for ds in range(int(sys.argv[3])):
    X, truth = make_cluster_features(n, dim, n_clusters=20, seed=ds)
    el, _, em = cluster_videos(X, 20, seed=0, delta=0.0)
    out=[]
    for kp in (0, 256):
        l, _, m = cluster_videos_scale(X, 20, 0, 0.0, knn_pca=kp)
        out.append(f"pca{kp}: {ari(el,l):.3f} {np.mean(m==em)*100:.1f}%")
    l, _, m = cluster_videos_scale(X, 20, 0, 0.0, affinity="nystrom")
    out.append(f"nys: {ari(el,l):.3f} {np.mean(m==em)*100:.1f}%")
    print(n, dim, ds, f"exact-vs-truth {ari(truth,el):.3f}", " | ".join(out), flush=True)
