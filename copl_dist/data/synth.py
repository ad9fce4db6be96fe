"""Synthetic corpora with the statistics and the difficulty of THUMOS'14 and ActivityNet 1.2.

Layout (per video v; times in seconds, then multiplied by `duration_scale`):
  thumos14: duration D_v ~ LogNormal(ln 155, 0.85), clipped to [20, 1200];
            segment count n_v = 1 + NegBin(mean (m - 1) D_v / E[D], r = 1.2) with m = 15.4
            (heavy-tailed: median about 9); lengths L ~ LogNormal(ln 3, 0.84) clipped to [0.5, 60],
            later ones dropped while sum L > 0.85 D_v.  Action fraction comes out near 0.3.
  anet12:   D_v ~ 6 + 230 Beta(1.1, 1.2) (mean about 116); n_v = 1 + NegBin(0.49, r = 0.3);
            action fraction f_v ~ Beta(2.2, 1) if n_v = 1 else Beta(2, 2); L = f_v D_v Dirichlet(1).
  Both: the background time D_v - sum L is cut into n_v + 1 gaps (0.2 s each + Dirichlet(1) shares),
  so segments lie inside [0, D_v] and never overlap.  A video has one class c_v; with probability p2 (13% / 0.14%)
  and n_v >= 3 a second class (a group-mate of c_v with probability 0.7) takes a minority of the
  segments, so the first class is the primary one (the most segments).

Features.  d = feature_dim / 2.  Each vector below has one unit-norm part in each d-dim block of
[RGB | Flow]; corpus-wide: g (non-negative), group prototypes P_k, class offsets O_c, actionness e,
scene types S_j (K = C of them, independent of the classes); per video: s_v, w_v.
  class vectors   u_c = normalise(P_{c // 4} + rho O_c), rho = 0.7: confusable groups of four
                  (same-group cosine about 0.67, other groups about 0).
  scene           s_v = normalise(S_{j_v} + tau n_v), j_v uniform, n_v random unit, tau = 1.5.
  snippet t of T covers [t, t+1] D_v / T.  m_t = share of it inside annotated actions;
  a_t(c) = xi_t * sum over class-c segments of (share covered * segment intensity), with intensity
  ~ LogNormal(0, 0.25) and xi_t ~ Gamma(2.5, 1/2.5) (some action snippets are weak); a_t = sum_c.
  r_t(c) = share covered by class-c context: windows of LogNormal(ln 0.8 L_med, 0.5) s just before
  and after each action, clipped to its gaps; q_t = share covered by unrelated motion: Poisson(bg / 40 s)
  intervals of LogNormal(ln L_med, 0.6) s anywhere; both zeroed inside actions (factor 1 - m_t).
  (L_med = the preset's median action length.)

  x_t = beta g                                                 global background, beta = 6
      + (1 - lam m_t) [sigma_R s_v^R | sigma_F s_v^F]          scene (4, 2); lam = 0.7: actor covers it
      + sum_c a_t(c) kappa u_c + a_t [eta_R e^R | eta_F e^F]   action: class (kappa = 3) + actionness (1, 2)
      + sum_c (1 - m_t) r_t(c) [kappa_x u_c^R | 0]             class context in RGB only, kappa_x = 1.8
      + (1 - m_t) q_t [0 | mu normalise(e^F + w_v^F)]          action-like Flow motion, no class, mu = 2.5
      + sigma_n (z_t + phi z_{t-1}) / sqrt(1 + phi^2)          MA(1) noise, z ~ N(0, I), 0.3 per dim, phi 0.5

Why it is hard in the paper's way: the scene (norm 4 in RGB) outweighs the class signal a video's
mean carries (about 0.3 * 3 on THUMOS), and scenes cluster by type, not by class, so clustering the
L2-normalised mean features gives an NMI near chance; over the action snippets alone the scene is
damped and the class (3) rules, so the action-only mean clusters by class (NMI > 0.9) - the gap HAS
exploits.  Context gives RGB class evidence outside the annotations (misleads the class-specific
branch); motion gives action-like Flow without a class (misleads the class-agnostic Flow branch while
RGB disagrees).  Weak snippets, context and motion keep a per-snippet linear probe for action vs
background near 90%.  Amplitudes are block norms and the noise is per dimension, so a small
feature_dim gives cleaner snippets (handy for tiny test corpora).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from copl_dist.common.atomic import temp_sibling
from copl_dist.common.errors import InputError

PRESETS = {
    "thumos14": {
        "subsets": (("validation", 200), ("test", 210)), "classes": 20, "layout": "count",
        "two_class_p": 0.13, "action_median_s": 3.0,
        "duration_range_s": (20.0, 1200.0),  # also bounds duration_scale (make_synthetic)
    },
    "anet12": {
        "subsets": (("training", 4819), ("validation", 2383)), "classes": 100, "layout": "fraction",
        "two_class_p": 0.0014, "action_median_s": 28.0, "duration_range_s": (6.0, 236.0),
    },
}
GROUP_SIZE = 4
# Feature amplitudes: norms per [RGB | Flow] block (see the module docstring).
RHO = 0.7  # class offset relative to its group prototype
BETA = 6.0  # global background
SIGMA_S = (4.0, 2.0)  # scene, (RGB, Flow)
TAU = 1.5  # per-video scene jitter around its scene type
SCENE_TYPES = 1.0  # scene types per class
LAM = 0.7  # scene attenuation on action snippets (the actor covers the scene)
KAPPA = (3.0, 3.0)  # class signal on action snippets
ETA = (1.0, 2.0)  # generic actionness on action snippets
KAPPA_CTX = 1.8  # class context in RGB around actions
MU = 2.5  # unrelated motion in Flow
MOTION_EVERY_S = 40.0  # one unrelated-motion interval per this much background (at scale 1)
SIGMA_N = 0.3  # per-dimension noise: low enough that a video's action mean is clean, see XI_SHAPE
PHI = 0.5  # temporal correlation of the noise (neighbouring snippets look alike)
XI_SHAPE = 2.5  # per-snippet action strength ~ Gamma(XI_SHAPE, 1 / XI_SHAPE), mean 1: weak snippets
# Longest video make_synthetic writes: 10^6 snippets of 2048 float32 are 8 GB (one array in memory).
MAX_SNIPPETS = 1_000_000


def make_synthetic(out_dir, preset: str = "thumos14", videos: int | None = None,
                   classes: int | None = None, seed: int = 0, snippets_per_second: float = 25 / 16,
                   feature_dim: int = 2048, duration_scale: float = 1.0,
                   progress: bool = False, annotated: bool = True) -> Path:
    """Write `out_dir/annotations.json` (ActivityNet "database") and `out_dir/features/VIDEO.npy`.

    `videos` is the count per subset (default: the real ones), `classes` the class count (default
    20 / 100). Features are float32 (T, feature_dim) = [RGB | Flow], T = max(8, round(D * sps)).
    The directory appears whole (built in a temporary sibling, then renamed); a seed fixes every byte.
    `annotated=False` writes every video with an empty annotation list (a corpus as users at scale
    have it); its features and durations are byte for byte those of the annotated corpus of the seed.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown synthetic preset '{preset}' (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    # Checked here, not only by the command line's argparse types: benchmarks and tests call this.
    n_classes = p["classes"] if classes is None else _count(classes, "classes", 1)
    if videos is not None:
        _count(videos, "videos per subset", 1)
    _count(feature_dim, "feature_dim", 2)
    if feature_dim % 2:
        raise InputError(f"synthetic feature_dim must be even and >= 2 ([RGB | Flow]), got {feature_dim}")
    _count(seed, "seed", 0)
    _positive(snippets_per_second, "snippets_per_second")
    _positive(duration_scale, "duration_scale")
    shortest, longest = (d * duration_scale for d in p["duration_range_s"])
    if round(shortest, 2) <= 0:
        # Durations are rounded to 0.01 s; a 0 s video has no time axis (and fails import).
        raise InputError(
            f"synthetic duration_scale {duration_scale:g} is too small: the shortest {preset} video "
            f"({p['duration_range_s'][0]:g} s) would last {shortest:.2g} s, under 0.01 s"
        )
    if longest * snippets_per_second > MAX_SNIPPETS:
        raise InputError(
            f"synthetic duration_scale {duration_scale:g} is too large: the longest {preset} video "
            f"would have {longest * snippets_per_second:.3g} snippets (at most {MAX_SNIPPETS:,})"
        )
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty directory")
    subsets = [(name, p["subsets"][i][1] if videos is None else int(videos))
               for i, (name, _) in enumerate(p["subsets"])]
    names = [f"class_{c:0{max(2, len(str(n_classes - 1)))}d}" for c in range(n_classes)]

    root = np.random.SeedSequence(seed)
    corpus_ss, *subset_ss = root.spawn(1 + len(subsets))
    basis = _corpus_vectors(np.random.default_rng(corpus_ss), n_classes, feature_dim // 2)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        tmp.mkdir()
    except OSError as exc:  # a read-only or full folder: named as the folder the user asked for
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    try:
        (tmp / "features").mkdir()
        database = {}
        jobs, primaries = [], {}
        for (sub, n), sss in zip(subsets, subset_ss):
            primary_ss, videos_ss = sss.spawn(2)
            primaries[sub] = _balanced(np.random.default_rng(primary_ss), n, n_classes)
            jobs += [(sub, i, ss) for i, ss in enumerate(videos_ss.spawn(n))]
        it = jobs
        if progress:
            from tqdm import tqdm
            it = tqdm(jobs, desc="synth", unit="video")
        for sub, i, ss in it:
            rng = np.random.default_rng(ss)
            vid = f"video_{sub}_{i + 1:07d}"
            dur_s, segs = _layout(rng, p, int(primaries[sub][i]), n_classes, duration_scale)
            t = max(8, int(round(dur_s * snippets_per_second)))
            x = _features(rng, basis, dur_s, segs, t, p["action_median_s"] * duration_scale)
            np.save(tmp / "features" / f"{vid}.npy", x)
            database[vid] = {
                "subset": sub, "duration": dur_s,
                "annotations": [{"segment": [s, e], "label": names[c]} for s, e, c in segs] if annotated else [],
            }
        text = json.dumps({"database": database}, indent=1) + "\n"
        (tmp / "annotations.json").write_text(text)
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a directory on every OS
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _count(value, name, least):
    """An integer argument >= least (bool refused: True is not a count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InputError(f"synthetic {name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _positive(value, name):
    """A finite number > 0 (Inf overflows the durations, NaN compares false with everything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        math.isfinite(value) and value > 0
    ):
        raise InputError(f"synthetic {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _balanced(rng, n, n_classes):
    """Primary classes as even as the count allows (each class about n / C videos), shuffled."""
    return rng.permutation(np.resize(np.arange(n_classes), n))


def _corpus_vectors(rng, n_classes, d):
    """Unit vectors per block: global g, class u (C, 2d), actionness e (2d,)."""
    def unit(*shape):
        v = rng.standard_normal(shape + (2, d))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    g = np.abs(unit())  # non-negative, like the mean of post-ReLU I3D features
    n_groups = -(-n_classes // GROUP_SIZE)
    protos = unit(n_groups)[np.arange(n_classes) // GROUP_SIZE]
    u = protos + RHO * unit(n_classes)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    scenes = unit(max(2, round(SCENE_TYPES * n_classes)))  # (K, 2, d), drawn independently of class
    return {"g": g.reshape(-1), "u": u.reshape(n_classes, -1), "e": unit().reshape(-1), "d": d,
            "scenes": scenes}


def _layout(rng, p, primary, n_classes, scale):
    """(duration_s, [(start_s, end_s, class)]) for one video, rounded to 0.01 s; see the docstring."""
    if p["layout"] == "count":
        dur = float(np.clip(rng.lognormal(math.log(155.0), 0.85), *p["duration_range_s"]))
        mean_dur = 155.0 * math.exp(0.85**2 / 2)
        mu, r = 14.4 * dur / mean_dur, 1.2
        n = 1 + int(rng.negative_binomial(r, r / (r + mu)))
        lengths = np.clip(rng.lognormal(math.log(3.0), 0.84, n), 0.5, 60.0)
        keep = max(1, int(np.searchsorted(np.cumsum(lengths), 0.85 * dur, side="right")))
        lengths = lengths[:keep]
        lengths[0] = min(lengths[0], 0.85 * dur)
    else:
        lo, hi = p["duration_range_s"]
        dur = lo + (hi - lo) * float(rng.beta(1.1, 1.2))
        r, mu = 0.3, 0.49
        n = 1 + int(rng.negative_binomial(r, r / (r + mu)))
        n = min(n, int(dur // 2))
        frac = rng.beta(2.2, 1.0) if n == 1 else rng.beta(2.0, 2.0)
        frac = float(np.clip(frac, 0.05, 0.95))
        lengths = np.maximum(frac * dur * rng.dirichlet(np.ones(n)), 0.5)
        lengths *= min(1.0, 0.95 * dur / lengths.sum())
    n = len(lengths)
    background = dur - lengths.sum()
    min_gap = min(0.2, background / (2 * (n + 1)))  # actions never touch, even after rounding
    gaps = min_gap + (background - (n + 1) * min_gap) * rng.dirichlet(np.ones(n + 1))
    starts = np.cumsum(np.concatenate([[0.0], lengths[:-1]])) + np.cumsum(gaps[:-1])
    cls = np.full(n, primary)
    if n >= 3 and n_classes > 1 and rng.random() < p["two_class_p"]:
        group = primary // GROUP_SIZE * GROUP_SIZE
        mates = [c for c in range(group, min(group + GROUP_SIZE, n_classes)) if c != primary]
        if mates and rng.random() < 0.7:
            second = int(rng.choice(mates))
        else:
            second = int((primary + rng.integers(1, n_classes)) % n_classes)
        k = int(np.clip(rng.binomial(n, 0.3), 1, (n - 1) // 2))
        cls[rng.choice(n, k, replace=False)] = second
    # Round to 0.01 s, keeping order: floor starts, floor ends, so no overlap and ends <= duration.
    dur = round(dur * scale, 2)
    s = np.floor(starts * scale * 100) / 100
    e = np.minimum(np.floor((starts + lengths) * scale * 100) / 100, dur)
    segs = [(float(a), float(b), int(c)) for a, b, c in zip(s, e, cls) if b > a]
    if not segs:  # a very small duration_scale rounded the action away: keep one tiny action
        segs = [(0.0, max(0.01, round(dur / 2, 2)), int(primary))]
    return dur, segs


def _coverage(t0, t1, starts, ends):
    """(T, K) share of each snippet [t0, t1) covered by each interval [start, end)."""
    lo = np.maximum(t0[:, None], starts[None, :])
    hi = np.minimum(t1[:, None], ends[None, :])
    return np.clip(hi - lo, 0.0, None) / (t1 - t0)[:, None]


def _features(rng, basis, dur, segs, t, action_median_s):
    """(T, 2d) float32 snippet features of one video (the model in the module docstring)."""
    d = basis["d"]
    edges = np.arange(t + 1) * (dur / t)
    t0, t1 = edges[:-1], edges[1:]
    s = np.array([a for a, _, _ in segs])
    e = np.array([b for _, b, _ in segs])
    cls = np.array([c for _, _, c in segs])
    present = np.unique(cls)
    onehot = (cls[:, None] == present[None, :]).astype(float)  # (n, Cv)
    intensity = rng.lognormal(0.0, 0.25, len(segs))
    act = _coverage(t0, t1, s, e) @ (onehot * intensity[:, None])  # (T, Cv)
    act *= rng.gamma(XI_SHAPE, 1.0 / XI_SHAPE, (t, 1))  # some action snippets are weak (static pose)
    a = act.sum(1)
    inside = np.minimum(_coverage(t0, t1, s, e).sum(1), 1.0)

    # Context windows before / after each action, inside the neighbouring gaps.
    prev_end = np.concatenate([[0.0], e[:-1]])
    next_start = np.concatenate([s[1:], [dur]])
    w = rng.lognormal(math.log(0.8 * action_median_s), 0.5, (2, len(segs)))
    cs = np.concatenate([np.maximum(prev_end, s - w[0]), e])
    ce = np.concatenate([s, np.minimum(next_start, e + w[1])])
    ctx = np.minimum(_coverage(t0, t1, cs, ce) @ np.vstack([onehot, onehot]), 1.0)
    ctx *= (1.0 - inside)[:, None]

    # Unrelated motion: about one interval per MOTION_EVERY_S of background, anywhere outside actions.
    n_motion = rng.poisson(max(dur - (e - s).sum(), 0.0) / MOTION_EVERY_S)
    ms = rng.uniform(0.0, dur, n_motion)
    me = ms + rng.lognormal(math.log(action_median_s), 0.6, n_motion)
    q = np.minimum(_coverage(t0, t1, ms, me).sum(1), 1.0) * (1.0 - inside)

    rgb = np.zeros(2 * d)
    rgb[:d] = 1.0
    u = basis["u"][present]  # (Cv, 2d)
    jitter = rng.standard_normal((2, d))
    scene = basis["scenes"][rng.integers(len(basis["scenes"]))] + TAU * jitter / np.linalg.norm(
        jitter, axis=1, keepdims=True)
    scene = (scene / np.linalg.norm(scene, axis=1, keepdims=True) * np.array(SIGMA_S)[:, None])
    scene = scene.reshape(-1)
    wv = rng.standard_normal(d)
    motion = basis["e"][d:] + wv / np.linalg.norm(wv)
    motion = np.concatenate([np.zeros(d), MU * motion / np.linalg.norm(motion)])
    kappa = np.where(rgb > 0, KAPPA[0], KAPPA[1])
    eta = np.where(rgb > 0, ETA[0], ETA[1])
    rows = [BETA * basis["g"], scene, *(kappa * u), *(KAPPA_CTX * u * rgb), eta * basis["e"], motion]
    coef = np.column_stack([np.ones(t), 1.0 - LAM * inside, act, ctx, a, q])  # (T, K)
    x = (coef @ np.vstack(rows)).astype(np.float32)
    z = rng.standard_normal((t + 1, 2 * d), dtype=np.float32)
    x += (SIGMA_N / math.sqrt(1 + PHI**2)) * (z[1:] + PHI * z[:-1])
    return x
