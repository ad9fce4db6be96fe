"""A second synthetic generator, written apart from `synth.py`: THUMOS-like corpora whose features
look like pooled I3D features, with their difficulty set by a `Cell` of named axes (the robustness
benchmark's grid, `copl bench robustness`).

Where `synth.py` adds block-normed vectors in feature space, this one draws a low-dimensional latent
state per snippet and maps it through a random projection and a ReLU, the way I3D's last pooled layer
mixes what a clip shows into 1024 non-negative channels per stream:

  latent (k = 64, one per stream m in {RGB, Flow}), per snippet t of video v:
    z_t = g                                      what every video shares (I3D features share a large mean)
        + A_s[m] (1 - 0.2 m_t) s_v               scene; the actor hides a fifth of it on action snippets
        + A_c[m] sum_c a_t(c) (u_c + j_v)        the class, with a per-video style j_v
        + A_e[m] a_t e                           generic actionness
        + context A_x[m] r_t(c) u_c              class context before and after actions
        + A_q[m] q_t w_v                         unrelated motion: action-like, no class
        + n_t                                    AR(1) noise, rho = 0.8 (neighbouring snippets alike)
  features x_t[m] = scale[m] * relu(W[m] z_t[m] + b[m] + 0.7 eps_t) + 0.02 |eps'_t|, float32,
                   [RGB 1024 | Flow 1024]; eps, eps' ~ N(0, I) per channel and snippet

  W has N(0, 1) entries and biases b ~ N(-0.6, 0.3): about half the channels of a snippet are near 0
  (docs/bench/robustness/cells.txt); per-channel scales ~ 0.4 LogNormal(0, 0.6) make the dimensions'
  spread uneven (as in I3D).
  Class latents: u_c = sqrt(confusion) P_group + sqrt(1 - confusion) O_c (unit vectors), so two classes
  of a group have cosine `confusion`. Scenes: one type per class; a video takes its class's type
  with probability 0.25, else a uniform one (scenes say something about the class, not much).
  m_t, a_t, r_t, q_t: each snippet's covered share of actions, context windows and motion intervals,
  smoothed by a [1/4, 1/2, 1/4] kernel; a_t carries a LogNormal(0, 0.3) strength per action and a
  Gamma(2, 1/2) strength per snippet (some action snippets are weak).

Layout per video: duration ~ LogNormal(ln 150 s, duration_sigma) within [15, 1200] s; 1 + Poisson(actions
- 1) actions covering a share ~ Beta around `action_share`; action lengths Dirichlet(2) shares,
background gaps Dirichlet(1); one primary class, and with probability 0.1 (3+ actions) a group-mate
takes some of them. Subsets "validation" (training) and "test", as THUMOS'14 names them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from copl_dist.common.atomic import temp_sibling
from copl_dist.common.errors import InputError

LATENT = 64
GROUP_SIZE = 4
# Latent amplitudes per stream (RGB, Flow): RGB sees scene and class, Flow sees motion and actionness.
A_SCENE = (1.0, 0.45)
A_CLASS = (1.5, 1.0)
A_ACTIONNESS = (0.3, 0.8)
A_CONTEXT = (0.9, 0.25)
A_MOTION = (0.15, 0.9)
A_GLOBAL = 1.2
STYLE = 0.35  # per-video jitter of the class latent
NOISE = 0.14  # per latent dimension (norm about 1.1)
RHO = 0.8  # AR(1) correlation of the latent noise between neighbouring snippets
OWN_SCENE_P = 0.25
SCENE_HIDDEN = 0.2  # share of the scene the actor hides on action snippets
CHANNEL_NOISE = 0.7  # independent per channel and snippet, before the ReLU


@dataclasses.dataclass(frozen=True)
class Cell:
    """One corpus of the grid: the difficulty axes, each at a value real datasets take."""

    name: str = "base"
    context: float = 0.6  # class context around actions, relative to the class signal on actions
    motion: float = 0.15  # share of the background covered by unrelated motion
    confusion: float = 0.6  # cosine between two classes of a group
    action_share: float = 0.33  # mean share of a video covered by actions
    actions: float = 8.0  # mean actions per video
    duration_sigma: float = 0.6  # spread of durations (log-normal sigma)

    def check(self) -> Cell:
        bounds = {"context": (0.0, 5.0), "motion": (0.0, 0.9), "confusion": (0.0, 0.99),
                  "action_share": (0.02, 0.9), "actions": (1.0, 100.0), "duration_sigma": (0.0, 2.0)}
        for key, (lo, hi) in bounds.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise InputError(f"cell '{self.name}': {key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return self


# One axis moved at a time from the base cell, to the ends real datasets reach (THUMOS'14 has about
# 30% action and 15 actions per video, ActivityNet about 60% and 1.5; both have context and camera motion).
CELLS = {c.name: c for c in (
    Cell(),
    Cell("context-strong", context=1.3),
    Cell("motion-heavy", motion=0.45),
    Cell("confusable", confusion=0.85),
    Cell("sparse", action_share=0.12),
    Cell("dense", action_share=0.5),
    Cell("few-long", actions=1.5),
    Cell("many-short", actions=16.0),
    Cell("duration-spread", duration_sigma=1.1),
)}


def make_i3d_like(out_dir, cell: Cell | str = "base", train_videos: int = 150, test_videos: int = 100,
                  classes: int = 10, seed: int = 0, snippets_per_second: float = 25 / 16,
                  feature_dim: int = 2048, duration_scale: float = 1.0) -> Path:
    """Write `out_dir/annotations.json` (ActivityNet "database") and `out_dir/features/VIDEO.npy`
    ((T, feature_dim) float32 = [RGB | Flow]); the folder appears whole, and a seed fixes every byte."""
    if isinstance(cell, str):
        if cell not in CELLS:
            raise InputError(f"unknown robustness cell '{cell}' (known: {', '.join(CELLS)})")
        cell = CELLS[cell]
    cell.check()
    for name, value, least in (("train_videos", train_videos, 1), ("test_videos", test_videos, 1),
                               ("classes", classes, 1), ("seed", seed, 0), ("feature_dim", feature_dim, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"i3d-like corpus: {name} must be an integer >= {least}, got {value!r}")
    if feature_dim % 2:
        raise InputError(f"i3d-like corpus: feature_dim must be even ([RGB | Flow]), got {feature_dim}")
    for name, value in (("snippets_per_second", snippets_per_second), ("duration_scale", duration_scale)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise InputError(f"i3d-like corpus: {name} must be a finite number > 0, got {value!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty directory")

    root = np.random.SeedSequence([seed, 0x13D])
    corpus_ss, train_ss, test_ss = root.spawn(3)
    basis = _basis(np.random.default_rng(corpus_ss), classes, feature_dim // 2)
    names = [f"class_{c:02d}" for c in range(classes)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        (tmp / "features").mkdir()
        database = {}
        for subset, n, ss in (("validation", train_videos, train_ss), ("test", test_videos, test_ss)):
            order_ss, videos_ss = ss.spawn(2)
            primaries = np.random.default_rng(order_ss).permutation(np.resize(np.arange(classes), n))
            for i, vss in enumerate(videos_ss.spawn(n)):
                rng = np.random.default_rng(vss)
                vid = f"video_{subset}_{i + 1:07d}"
                dur, segs = _layout(rng, cell, int(primaries[i]), classes, duration_scale)
                t = max(8, int(round(dur * snippets_per_second)))
                np.save(tmp / "features" / f"{vid}.npy", _features(rng, basis, cell, dur, segs, t, int(primaries[i])))
                database[vid] = {"subset": subset, "duration": dur,
                                 "annotations": [{"segment": [s, e], "label": names[c]} for s, e, c in segs]}
        (tmp / "annotations.json").write_text(json.dumps({"database": database}, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _unit(rng, *shape):
    v = rng.standard_normal(shape + (LATENT,))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _basis(rng, classes, half):
    """Corpus-wide latents and the two streams' projections."""
    groups = -(-classes // GROUP_SIZE)
    return {
        "half": half,
        "g": _unit(rng, 2),
        "proto": _unit(rng, groups, 2),
        "offset": _unit(rng, classes, 2),
        "e": _unit(rng, 2),
        "scenes": _unit(rng, classes, 2),
        "motion": _unit(rng, 2),
        "W": rng.standard_normal((2, LATENT, half)).astype(np.float32),
        "b": rng.normal(-0.6, 0.3, (2, half)).astype(np.float32),
        "scale": (0.4 * rng.lognormal(0.0, 0.6, (2, half))).astype(np.float32),
    }


def _layout(rng, cell, primary, classes, scale):
    dur = float(np.clip(rng.lognormal(math.log(150.0), cell.duration_sigma), 15.0, 1200.0))
    n = 1 + int(rng.poisson(cell.actions - 1.0))
    n = max(1, min(n, int(dur // 2)))
    k = 12.0
    share = float(np.clip(rng.beta(k * cell.action_share, k * (1 - cell.action_share)), 0.03, 0.9))
    lengths = np.maximum(share * dur * rng.dirichlet(np.full(n, 2.0)), 0.5)
    lengths *= min(1.0, 0.9 * dur / lengths.sum())
    gaps = (dur - lengths.sum()) * rng.dirichlet(np.ones(n + 1))
    starts = np.cumsum(np.concatenate([[0.0], lengths[:-1]])) + np.cumsum(gaps[:-1])
    cls = np.full(n, primary)
    group = primary // GROUP_SIZE * GROUP_SIZE
    mates = [c for c in range(group, min(group + GROUP_SIZE, classes)) if c != primary]
    if n >= 3 and mates and rng.random() < 0.1:
        cls[rng.choice(n, max(1, n // 4), replace=False)] = int(rng.choice(mates))
    dur = round(dur * scale, 2)
    s = np.floor(starts * scale * 100) / 100
    e = np.minimum(np.floor((starts + lengths) * scale * 100) / 100, dur)
    segs = [(float(a), float(b), int(c)) for a, b, c in zip(s, e, cls) if b > a]
    return dur, segs or [(0.0, max(0.01, round(dur / 2, 2)), int(primary))]


def _coverage(t0, t1, starts, ends):
    lo = np.maximum(t0[:, None], np.asarray(starts)[None, :])
    hi = np.minimum(t1[:, None], np.asarray(ends)[None, :])
    return np.clip(hi - lo, 0.0, None) / (t1 - t0)[:, None]


def _smooth(x):
    """[1/4, 1/2, 1/4] along time (axis 0), edges repeated: onsets spread over neighbouring snippets."""
    p = np.concatenate([x[:1], x, x[-1:]])
    return 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]


def _features(rng, basis, cell, dur, segs, t, primary):
    edges = np.arange(t + 1) * (dur / t)
    t0, t1 = edges[:-1], edges[1:]
    s = np.array([a for a, _, _ in segs])
    e = np.array([b for _, b, _ in segs])
    cls = np.array([c for _, _, c in segs])
    present = np.unique(cls)
    onehot = (cls[:, None] == present[None, :]).astype(float)
    cover = _coverage(t0, t1, s, e)  # (T, n)
    inside = np.minimum(cover.sum(1), 1.0)
    act = cover @ (onehot * rng.lognormal(0.0, 0.3, len(segs))[:, None])  # (T, Cv)
    act = _smooth(act * rng.gamma(2.0, 1.0 / 2.0, (t, 1)))
    # Context: windows before and after each action, inside its neighbouring gaps.
    lengths = e - s
    prev_end = np.concatenate([[0.0], e[:-1]])
    next_start = np.concatenate([s[1:], [dur]])
    w = rng.lognormal(np.log(0.6 * np.maximum(lengths, 0.5)), 0.5, (2, len(segs)))
    cs = np.concatenate([np.maximum(prev_end, s - w[0]), e])
    ce = np.concatenate([s, np.minimum(next_start, e + w[1])])
    ctx = _smooth(np.minimum(_coverage(t0, t1, cs, ce) @ np.vstack([onehot, onehot]), 1.0) * (1 - inside)[:, None])
    # Unrelated motion over about `cell.motion` of the background.
    background = max(dur - lengths.sum(), 0.0)
    mean_len = max(float(np.median(lengths)), 0.5)
    n_motion = rng.poisson(cell.motion * background / mean_len)
    ms = rng.uniform(0.0, dur, n_motion)
    me = ms + rng.lognormal(math.log(mean_len), 0.5, n_motion)
    q = _smooth(np.minimum(_coverage(t0, t1, ms, me).sum(1), 1.0) * (1 - inside))
    inside = _smooth(inside)

    scene_type = primary if rng.random() < OWN_SCENE_P else int(rng.integers(len(basis["scenes"])))
    c = math.sqrt(cell.confusion)
    u = c * basis["proto"][present // GROUP_SIZE] + math.sqrt(1 - cell.confusion) * basis["offset"][present]  # (Cv, 2, k)
    u = u + STYLE * _unit(rng, 2)
    scene = basis["scenes"][scene_type] + 0.6 * _unit(rng, 2)
    motion = basis["motion"] + 0.6 * _unit(rng, 2)
    noise = rng.standard_normal((t, 2, LATENT)) * NOISE
    for i in range(1, t):  # AR(1): stationary, variance NOISE^2
        noise[i] = RHO * noise[i - 1] + math.sqrt(1 - RHO**2) * noise[i]
    out = np.empty((t, 2 * basis["half"]), dtype=np.float32)
    for m in range(2):
        z = (A_GLOBAL * basis["g"][m] + A_SCENE[m] * (1 - SCENE_HIDDEN * inside)[:, None] * scene[m]
             + A_CLASS[m] * act @ u[:, m] + A_ACTIONNESS[m] * act.sum(1)[:, None] * basis["e"][m]
             + cell.context * A_CONTEXT[m] * ctx @ u[:, m] + A_MOTION[m] * q[:, None] * motion[m] + noise[:, m])
        h = z.astype(np.float32) @ basis["W"][m] + basis["b"][m]
        h += CHANNEL_NOISE * rng.standard_normal(h.shape, dtype=np.float32)
        part = basis["scale"][m] * np.maximum(h, 0.0)
        part += 0.02 * np.abs(rng.standard_normal(part.shape, dtype=np.float32))
        out[:, m * basis["half"]:(m + 1) * basis["half"]] = part
    return out
