"""The label-free objectives of `copl tune` (pure functions of one iteration's teacher): each
scores a trial without any label, so hyper-parameters can be chosen without test or training labels.

  silhouette  mean PLRI score s_i (Eq. 8) over the training videos of the clustering that the
              iteration's teacher induces (HAS global features from one teacher pass, spectral
              clustering with the next iteration's seed): how well separated the videos it groups are.
  agreement   mean over training videos of the Pearson correlation over time between A_ca(x) and
              A_ca(shift(x)), A_ca the teacher's class-agnostic attention (Eq. 13), shift the
              student's temporal feature shift (seeded per iteration). See search.py for why a
              correlation rather than 1 - MSE.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from copl_dist.cluster.videos import cluster_videos
from copl_dist.common.seeding import STREAM_CLUSTER, derive_seed
from copl_dist.config import CoplConfig
from copl_dist.method import has as has_lib
from copl_dist.method.augment import temporal_feature_shift
from copl_dist.method.engine import infer_video
from copl_dist.run.driver import cluster_scale_options

_STREAM_AGREEMENT = 101


def silhouette_objective(cfg: CoplConfig, corpus: Any, video_ids: list[str], teacher: Any, num_classes: int, iteration: int) -> float:
    """Mean PLRI score of the clustering that this teacher's HAS global features give (label-free)."""
    feats = []
    for vid in video_ids:
        x = corpus.features(vid)
        out = infer_video(teacher, x, cfg.train.beta, cfg.train.topl_ratio)
        feats.append(has_lib.global_feature(
            x, has_lib.has_attention(out.a_cs, out.a_ca, cfg.has.gamma, branch=cfg.has.branch), cfg.has.centre
        ))
    seed = derive_seed(cfg.seed, STREAM_CLUSTER, iteration + 1)
    _, scores, _ = cluster_videos(
        np.stack(feats), num_classes, seed, cfg.cluster.delta, cfg.cluster.plri, **cluster_scale_options(cfg)
    )
    return float(scores.mean())


def agreement_objective(cfg: CoplConfig, corpus: Any, video_ids: list[str], teacher: Any, iteration: int) -> float:
    """Mean over videos of corr_t(A_ca(x), A_ca(shift(x))) of the teacher; 0 for a flat curve (label-free)."""
    import torch


    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, _STREAM_AGREEMENT, iteration))
    teacher.eval()
    corrs = []
    with torch.no_grad():
        for vid in video_ids:
            x = torch.from_numpy(np.array(corpus.features(vid), dtype=np.float32))[None]  # (1, T, D)
            a = teacher(x)["a_ca"][0].double().numpy()  # (T,)
            a_shift = teacher(temporal_feature_shift(x, cfg.train.shift_channels, generator=gen))["a_ca"][0].double().numpy()
            corrs.append(_correlation(a, a_shift))
    return float(np.mean(corrs))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (T,) curves; 0 when either is flat (no shape to agree on)."""
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    return float(da @ db) / denom if denom > 1e-24 else 0.0
