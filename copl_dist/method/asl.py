"""A reference weakly supervised localizer: ASL (Ma et al., CVPR 2021, "Weakly Supervised Temporal
Action Localization Using Action Selection Learning"), following its public recipe
(github.com/layer6ai-labs/ASL: models/asl_model.py, main_thumos.py, inference_thumos.py).

Written apart from IOCNet and its losses so that it measures them: a known-good model on the same
features and the same evaluator. What follows the published code:
  - model: k=1 convolutions, 512 hidden, a class branch on [RGB | Flow] and one actionness head per stream;
  - training: top-k = T // 8 snippets by (softmax(CAS) + A_flow + A_rgb) / 3 per class; softmax
    cross-entropy of their mean CAS against the normalised video labels; generalised cross-entropy
    (q = 0.7) of each actionness head against the top-k snippets of the video's classes;
    Adam (betas 0.9 / 0.999, weight decay 5e-4), batch 16;
  - inference: classes whose softmax of the top-k mean CAS is >= 0.25 (else the best one); their
    combined score upsampled 24x, thresholded at 0.1 ... 0.9; outer-inner-contrast score (outer
    reach 0.25 of the length) + 0.2 x the class score; soft NMS per class (IoU 0.4, alpha 0.35).
What differs: the model is evaluated once, after its last epoch (the public code keeps the epoch with
the best test mAP); a training video gives the run's `data.snippets` snippets (the public code: 750)
and a test video all its snippets (the public code: 750 evenly spaced ones, top-k 93); the epochs are
the caller's (the public script: 100); detections end at the video's duration.
Pure torch / numpy: features and labels in, a model and detections out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from copl_dist.method.engine import sample_indices

CLASS_THRESHOLD = 0.25
ACT_THRESHOLDS = np.arange(0.1, 1.0, 0.1)
UPSCALE = 24
GAMMA = 0.2
OUTER = 0.25
NMS_IOU = 0.4
NMS_ALPHA = 0.35


class ASLNet(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        half = feature_dim // 2

        def head(inp: int, out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))

        self.half = half
        self.base = head(feature_dim, num_classes)
        self.rgb = head(half, 1)
        self.flow = head(half, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> CAS logits (B, T, C), A_rgb (B, T), A_flow (B, T)."""
        return (self.base(x), torch.sigmoid(self.rgb(x[..., : self.half])).squeeze(-1),
                torch.sigmoid(self.flow(x[..., self.half :])).squeeze(-1))


def _selection(cas: Tensor, a_rgb: Tensor, a_flow: Tensor) -> Tensor:
    """(softmax(CAS) + A_flow + A_rgb) / 3 per class, (B, T, C)."""
    return (torch.softmax(cas, -1) + a_flow.unsqueeze(-1) + a_rgb.unsqueeze(-1)) / 3.0


def _gce(a: Tensor, target: Tensor, q: float) -> Tensor:
    """ASL's generalised cross-entropy of attention a (B, T) against a binary target (B, T)."""
    pos = target.sum(1) + 1e-7
    neg = (1 - target).sum(1) + 1e-7
    first = (((1 - (a + 1e-7) ** q) / q) * target).sum(1) / pos
    second = (((1 - (1 - a + 1e-7) ** q) / q) * (1 - target)).sum(1) / neg
    return first.mean() + second.mean()


def asl_loss(net: ASLNet, x: Tensor, labels: Tensor, q: float = 0.7) -> Tensor:
    """The training loss of one batch: x (B, T, D), labels (B, C) multi-hot."""
    cas, a_rgb, a_flow = net(x)
    k = max(1, x.shape[1] // 8)
    top = torch.topk(_selection(cas.detach(), a_rgb.detach(), a_flow.detach()), k, dim=1).indices  # (B, k, C)
    cas_top = cas.gather(1, top).mean(1)  # (B, C)
    target = labels / labels.sum(1, keepdim=True) + 1e-10
    ce = -(target * F.log_softmax(cas_top, dim=1)).sum(1).mean()
    chosen = torch.zeros_like(cas, dtype=torch.bool).scatter_(1, top, True)  # (B, T, C)
    pseudo = (chosen & (labels > 0).unsqueeze(1)).any(-1).to(x.dtype)  # (B, T)
    return ce + _gce(a_flow, pseudo, q) + _gce(a_rgb, pseudo, q)


def train_asl(features: Sequence[np.ndarray], labels: np.ndarray, epochs: int, lr: float = 1e-4,
              snippets: int = 256, batch: int = 16, seed: int = 0,
              on_epoch: Callable[[int, ASLNet], None] | None = None) -> ASLNet:
    """Train on videos' (T_i, D) features with (N, C) multi-hot labels; `on_epoch(epoch, net)` after each
    epoch (1-based; a training curve evaluates there, the net in eval mode and no-grad)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ASLNet(features[0].shape[1], labels.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=5e-4)
    y_all = torch.as_tensor(labels, dtype=torch.float32)
    for epoch in range(1, epochs + 1):
        net.train()
        order = rng.permutation(len(features))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x = torch.from_numpy(np.stack([features[i][sample_indices(len(features[i]), snippets, rng)] for i in idx]).astype(np.float32))
            loss = asl_loss(net, x, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            net.eval()
            with torch.no_grad():
                on_epoch(epoch, net)
    net.eval()
    return net


def _groups(idx: np.ndarray) -> list[np.ndarray]:
    return np.split(idx, np.where(np.diff(idx) != 1)[0] + 1) if idx.size else []


def _soft_nms(props: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """ASL's (BaSNet's) soft NMS over (score, start, end): the kept ones, then the decayed others."""
    p = np.asarray(props, dtype=np.float64)
    order = p[:, 0].argsort()[::-1]
    keep, decayed = [], []
    area = p[:, 2] - p[:, 1] + 1
    while order.size:
        i = order[0]
        keep.append(tuple(p[i]))
        rest = order[1:]
        inter = np.maximum(0.0, np.minimum(p[i, 2], p[rest, 2]) - np.maximum(p[i, 1], p[rest, 1]) + 1)
        iou = inter / (area[i] + area[rest] - inter)
        over = iou >= NMS_IOU
        decayed += [(p[j, 0] * np.exp(-(iou[n] ** 2) / NMS_ALPHA), p[j, 1], p[j, 2]) for n, j in enumerate(rest) if over[n]]
        order = rest[~over]
    return keep + decayed


def asl_outputs(net: ASLNet, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One video's (T, D) features, all T snippets -> the combined score (T, C) and the video's class
    scores (C,): the softmax of the mean CAS over each class's top T // 8 snippets."""
    with torch.no_grad():
        x = torch.from_numpy(np.array(features, dtype=np.float32))[None]  # a copy: corpus arrays are read-only
        cas, a_rgb, a_flow = net(x)
        combined = _selection(cas, a_rgb, a_flow)[0]  # (T, C)
        top = torch.topk(combined, max(1, x.shape[1] // 8), dim=0).indices  # (k, C)
        score = torch.softmax(cas[0].gather(0, top).mean(0), -1)
    return combined.numpy(), score.numpy()


def detect_asl(net: ASLNet, features: np.ndarray, duration_s: float) -> list[tuple[float, float, int, float]]:
    """(start_s, end_s, class, score) detections of one video's (T, D) features, all T snippets."""
    return asl_localize(*asl_outputs(net, features), duration_s)


def asl_localize(combined: np.ndarray, score: np.ndarray, duration_s: float) -> list[tuple[float, float, int, float]]:
    """ASL's inference on a (T, C) score with values in [0, 1] and (C,) class scores (ASL's own from
    `asl_outputs`, or another network's: the same inference on either)."""
    combined, score = np.asarray(combined), np.asarray(score)
    pred = np.flatnonzero(score >= CLASS_THRESHOLD)
    if pred.size == 0:
        pred = np.array([int(score.argmax())])
    t = combined.shape[0]
    grid = np.arange(0, t, 1.0 / UPSCALE)
    per_index = duration_s / (t * UPSCALE)  # seconds per upsampled index
    out = []
    for c in pred:
        # Linear interpolation, extrapolated past the last snippet (scipy's interp1d in the public code).
        y = combined[:, c]
        up = np.interp(grid, np.arange(t), y)
        if t > 1:
            tail = grid > t - 1
            up[tail] = y[-1] + (grid[tail] - (t - 1)) * (y[-1] - y[-2])
        props = []
        for th in ACT_THRESHOLDS:
            for g in _groups(np.flatnonzero(up > th)):
                n = len(g)
                lo, hi = max(0, int(g[0] - OUTER * n)), min(len(up) - 1, int(g[-1] + OUTER * n))
                outer = np.concatenate([up[lo : g[0]], up[g[-1] + 1 : hi + 1]])
                s = float(up[g].mean() - (outer.mean() if outer.size else 0.0) + GAMMA * score[c])
                props.append((s, g[0] * per_index, (g[-1] + 1) * per_index))
        if props:
            out += [(float(a), float(min(b, duration_s)), int(c), float(sc)) for sc, a, b in _soft_nms(props)]
    return out
