"""Training and inference of IOCNet, with no Ray and no MLflow.

`train_loop_per_worker(config)` is the per-worker function: a plain dict in, per-epoch metrics out
through a `report` callback, the teacher and the HAS voting state at the end. The in-process path
calls it directly; Ray Train runs the same function on each worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from copl_dist import has as has_lib
from copl_dist.augment import temporal_feature_shift
from copl_dist.config import CoplConfig, from_dict
from copl_dist.corpus import Corpus
from copl_dist.losses import total_loss
from copl_dist.model import IOCNet, ema_update, make_teacher, selection_score, topl_count, video_scores
from copl_dist.seeding import STREAM_INIT, STREAM_SAMPLING, STREAM_SHIFT, derive_seed, seed_everything

LOSS_KEYS = ("loss", "cls", "asl", "ci", "contrastive", "co")

ReportFn = Callable[[dict[str, float], dict[str, Any] | None], None]


def sample_indices(num_snippets: int, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """`length` snippet indices covering a video of `num_snippets`.

    Longer videos: one random index in each of `length` equal bins (ASL/W-TALC's perturbed uniform
    sampling); `rng=None` takes each bin's start, for deterministic evaluation. Shorter videos:
    indices repeat uniformly, so every batch has the same T and no zero padding poses as background.
    """
    if num_snippets > length:
        edges = np.linspace(0, num_snippets, length + 1)
        lo = np.floor(edges[:-1]).astype(np.int64)
        hi = np.maximum(lo + 1, np.floor(edges[1:]).astype(np.int64))
        if rng is None:
            return lo
        return lo + np.floor(rng.random(length) * (hi - lo)).astype(np.int64)
    return np.floor(np.linspace(0, num_snippets, length, endpoint=False)).astype(np.int64)


def ema_decay_at(step: int, decay: float) -> float:
    """Mean-teacher warm-up: early teachers follow the student closely instead of lagging at init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@dataclass
class TeacherOutputs:
    """Teacher outputs for one whole video, as numpy."""

    cas: np.ndarray  # (T, C) logits
    a_cs: np.ndarray  # (T,)
    a_ca: np.ndarray  # (T,)
    h_cs: np.ndarray  # (T, C) selection score, Eq. 14
    class_scores: np.ndarray  # (C,) video-level softmax scores


@torch.no_grad()
def infer_video(model: IOCNet, features: np.ndarray, beta: float, topl_ratio: float) -> TeacherOutputs:
    """The model on every snippet of one video."""
    model.eval()
    x = torch.from_numpy(np.array(features, dtype=np.float32))[None]  # a writable copy of the mmap view
    out = model(x)
    h = selection_score(out["cas"], out["a_ca_r"], out["a_ca_f"], beta)
    scores = video_scores(out["cas"], h, topl_count(x.shape[1], topl_ratio))
    return TeacherOutputs(
        cas=out["cas"][0].numpy(),
        a_cs=out["a_cs"][0].numpy(),
        a_ca=out["a_ca"][0].numpy(),
        h_cs=h[0].numpy(),
        class_scores=scores[0].numpy(),
    )


def update_votes(
    model: IOCNet,
    corpus: Corpus,
    video_ids: list[str],
    votes: dict[str, np.ndarray],
    cfg: CoplConfig,
) -> None:
    """One epoch's HAS vote (Eqs. 1-4) for each video, from the teacher on all its snippets."""
    for vid in video_ids:
        out = infer_video(model, corpus.features(vid), cfg.train.beta, cfg.train.topl_ratio)
        a_has = has_lib.has_attention(out.a_cs, out.a_ca, cfg.has.gamma, branch=cfg.has.branch)
        previous = votes.get(vid) if cfg.has.voting else None
        votes[vid] = has_lib.vote(previous, a_has, cfg.has.alpha)


def build_batch(
    corpus: Corpus, video_ids: list[str], length: int, rng: np.random.Generator
) -> torch.Tensor:
    """(B, length, D) float32 from the corpus' memory-mapped shards."""
    rows = []
    for vid in video_ids:
        feats = corpus.features(vid)
        rows.append(feats[sample_indices(feats.shape[0], length, rng)])
    return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))


def train_loop_per_worker(config: dict[str, Any], report: ReportFn | None = None) -> dict[str, Any]:
    """Train IOCNet (student + EMA teacher) on one pseudo-labelled set.

    config keys: "cfg" (CoplConfig as dict), "corpus" (root path), "video_ids" (training videos),
    "targets" ((N, C) label distributions; zero rows for U), "labelled" ((N,) bools),
    "num_classes", "iteration", "collect_votes" (bool), and optionally "init_state" (a teacher state
    dict to start from). Returns {"teacher": state dict, "votes": {vid: (T,) array}, "history": [...]}.
    """
    cfg = from_dict(config["cfg"], source="train config")
    corpus = Corpus.open(config["corpus"])
    video_ids: list[str] = list(config["video_ids"])
    targets = torch.as_tensor(np.asarray(config["targets"], dtype=np.float32))
    labelled = torch.as_tensor(np.asarray(config["labelled"], dtype=bool))
    num_classes = int(config["num_classes"])
    iteration = int(config.get("iteration", 0))
    collect_votes = bool(config.get("collect_votes", False))
    rank = int(config.get("rank", 0))

    seed_everything(derive_seed(cfg.seed, STREAM_INIT, iteration))
    student = IOCNet(num_classes, cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout)
    if config.get("init_state") is not None:
        student.load_state_dict(config["init_state"])
    teacher = make_teacher(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sampling_rng = np.random.default_rng(derive_seed(cfg.seed, STREAM_SAMPLING, iteration, rank))
    shift_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_SHIFT, iteration, rank))

    length = cfg.data.snippets
    l_count = topl_count(length, cfg.train.topl_ratio)
    n = len(video_ids)
    batch = min(cfg.train.batch_size, n)
    steps_per_epoch = max(1, math.ceil(n / batch))
    first_vote_epoch = 0 if cfg.has.vote_last == 0 else max(0, cfg.train.epochs - cfg.has.vote_last)
    votes: dict[str, np.ndarray] = {}
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.train.epochs):
        student.train()
        order = sampling_rng.permutation(n)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            if len(idx) == 0:
                continue
            x = build_batch(corpus, [video_ids[i] for i in idx], length, sampling_rng)
            x_student = temporal_feature_shift(x, cfg.train.shift_channels, generator=shift_gen)
            student_out = student(x_student)
            with torch.no_grad():
                teacher_out = teacher(x)
            loss, terms = total_loss(
                student_out, teacher_out, targets[idx], labelled[idx], cfg.loss, cfg.train.beta, l_count
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            ema_update(teacher, student, ema_decay_at(step, cfg.train.ema_decay))
            step += 1
            for key in LOSS_KEYS:
                sums[key] += float(terms[key])
        metrics = {key: sums[key] / steps_per_epoch for key in LOSS_KEYS}
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        if collect_votes and epoch >= first_vote_epoch:
            update_votes(teacher, corpus, video_ids, votes, cfg)
        if report is not None:
            report(metrics, None)
    return {
        "teacher": {k: v.detach().clone() for k, v in teacher.state_dict().items()},
        "votes": votes,
        "history": history,
    }
