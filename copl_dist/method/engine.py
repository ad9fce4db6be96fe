"""Training and inference of IOCNet, with no Ray and no MLflow.

`train_loop_per_worker(config)` is the per-worker function: a plain dict in, per-epoch metrics out
through a `report` callback, the teacher and the HAS voting state at the end. The in-process path
calls it directly; Ray Train runs the same function on each worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from copl_dist.common.errors import InputError
from copl_dist.common.seeding import (
    STREAM_DROPOUT,
    STREAM_INIT,
    STREAM_SAMPLING,
    STREAM_SHIFT,
    derive_seed,
    seed_everything,
)
from copl_dist.config import CoplConfig, from_dict
from copl_dist.data.corpus import Corpus
from copl_dist.method import has as has_lib
from copl_dist.method.augment import temporal_feature_shift
from copl_dist.method.losses import total_loss
from copl_dist.method.model import (
    IOCNet,
    ema_update,
    make_teacher,
    selection_score,
    topl_count,
    video_scores,
)

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
    device = next(model.parameters()).device
    x = torch.from_numpy(np.array(features, dtype=np.float32))[None].to(device)  # a writable copy of the mmap view
    out = model(x)
    h = selection_score(out["cas"], out["a_ca_r"], out["a_ca_f"], beta)
    scores = video_scores(out["cas"], h, topl_count(x.shape[1], topl_ratio))
    return TeacherOutputs(
        cas=out["cas"][0].cpu().numpy(),
        a_cs=out["a_cs"][0].cpu().numpy(),
        a_ca=out["a_ca"][0].cpu().numpy(),
        h_cs=h[0].cpu().numpy(),
        class_scores=scores[0].cpu().numpy(),
    )


class LocalVoter:
    """HAS voting (Eqs. 1-4) in this process: after each voting epoch, the teacher on every snippet
    of every training video. Ray actors implement the same three methods (distributed/has_actors)."""

    def __init__(self, corpus: Corpus, video_ids: list[str], cfg: CoplConfig):
        self.corpus = corpus
        self.video_ids = list(video_ids)
        self.cfg = cfg
        self.votes: dict[str, np.ndarray] = {}

    def vote(self, epoch: int, teacher: IOCNet) -> None:
        update_votes(teacher, self.corpus, self.video_ids, self.votes, self.cfg)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.votes.items()}

    def restore(self, votes: dict[str, np.ndarray]) -> None:
        self.votes = {k: np.array(v) for k, v in votes.items()}


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
    corpus: Corpus, video_ids: list[str], indices: np.ndarray, length: int, seed: int, iteration: int, epoch: int
) -> torch.Tensor:
    """(B, length, D) float32 from the corpus' memory-mapped shards.

    Each video's snippet draw depends only on (seed, iteration, epoch, video index), not on the
    batch or the worker that reads it: 1 and N workers train on the same snippets.
    """
    rows = []
    for i in indices:
        feats = corpus.features(video_ids[int(i)])
        rng = np.random.default_rng(derive_seed(seed, STREAM_SAMPLING, iteration, epoch, int(i)))
        rows.append(feats[sample_indices(feats.shape[0], length, rng)])
    return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))


def resolve_device(name: str) -> torch.device:
    """train.device -> a torch device: "auto" is the first GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"config key 'train.device' is '{name}', but torch sees no CUDA device")
    return device


def distributed_context() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised (Ray Train, torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


SUP_KEYS = ("cls", "asl")  # means over the batch's pseudo-labelled videos (P)
UN_KEYS = ("ci", "contrastive", "co")  # means over all its videos


def batch_scales(labelled: np.ndarray, global_idx: np.ndarray, idx: np.ndarray, world: int) -> tuple[float, float]:
    """(sup_scale, un_scale) of the rank that holds `idx` of the global batch `global_idx`.

    A rank's means are over its own videos; scaled by the rank's share of the global batch (of its
    labelled videos for P terms, of all for L_un), their average over the ranks is the global batch's
    mean. DDP averages gradients over ranks, so the same scales make the gradients the 1-worker ones.
    """
    n_lab = int(labelled[global_idx].sum())
    sup_scale = world * int(labelled[idx].sum()) / n_lab if n_lab else 1.0
    un_scale = world * len(idx) / len(global_idx)
    return sup_scale, un_scale


def rank_share(terms: dict[str, float], loss: float, sup_scale: float, un_scale: float) -> dict[str, float]:
    """This rank's loss terms weighted like its gradients (batch_scales): their mean over the ranks
    is the global batch's mean. `terms` are total_loss's unscaled per-rank means; `loss` is the
    scaled loss it returned (sup * sup_scale + un * un_scale)."""
    share = {"loss": float(loss)}
    for key in SUP_KEYS:
        share[key] = terms[key] * sup_scale
    for key in UN_KEYS:
        share[key] = terms[key] * un_scale
    return share


def _all_reduce_mean(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def epoch_batches(n: int, batch: int, world: int, seed: int, iteration: int, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches (video indices), the same on every rank.

    A last batch too small to give every rank a video is dropped (never with one worker). A full
    batch smaller than the world would leave ranks idle and drop every batch, training nothing:
    that is a ValueError (the Ray driver caps the workers at the global batch, so it never fires).
    """
    if min(batch, n) < world:
        raise ValueError(
            f"global batch of {min(batch, n)} videos (train.batch_size {batch}, {n} training videos) "
            f"is smaller than the {world} workers: every batch would be dropped"
        )
    order = np.random.default_rng(derive_seed(seed, STREAM_SAMPLING, iteration, epoch)).permutation(n)
    batches = [order[i : i + batch] for i in range(0, n, batch)]
    return [b for b in batches if len(b) >= world]


def build_models(
    cfg: CoplConfig, num_classes: int, iteration: int, device: torch.device,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[IOCNet, IOCNet, torch.optim.Optimizer]:
    """(student, EMA teacher, optimizer) as a training starts them: the student's weights from the
    iteration's seed (or `init_state`), the teacher a copy of it."""
    seed_everything(derive_seed(cfg.seed, STREAM_INIT, iteration))
    student = IOCNet(num_classes, cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout)
    if init_state is not None:
        student.load_state_dict(init_state)
    student.to(device)
    teacher = make_teacher(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return student, teacher, optimizer


def form_batch(
    corpus: Corpus, video_ids: list[str], idx: np.ndarray, cfg: CoplConfig, iteration: int, epoch: int, b: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `b` of an epoch: (teacher input, student input), each (B, snippets, D) on `device`; the
    student's is temporally shifted (the shift drawn on the CPU, so every device sees the same channels)."""
    x = build_batch(corpus, video_ids, idx, cfg.data.snippets, cfg.seed, iteration, epoch)
    shift_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_SHIFT, iteration, epoch, b))
    x_student = temporal_feature_shift(x, cfg.train.shift_channels, generator=shift_gen)
    return x.to(device), x_student.to(device)


def train_step(
    model: torch.nn.Module, teacher: IOCNet, optimizer: torch.optim.Optimizer, x: torch.Tensor,
    x_student: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor, cfg: CoplConfig, step: int,
    sup_scale: float = 1.0, un_scale: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """One optimizer step: the student (`model`: IOCNet, or DDP around it) forward on `x_student`
    and backward, the teacher forward on `x`, Eq. 22's losses (total_loss), gradient clipping, Adam,
    the EMA update at `step`. Returns (the scaled loss, total_loss's unscaled terms)."""
    student = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    student_out = model(x_student)
    with torch.no_grad():
        teacher_out = teacher(x)
    l_count = topl_count(x.shape[1], cfg.train.topl_ratio)
    loss, terms = total_loss(
        student_out, teacher_out, targets, labelled, cfg.loss, cfg.train.beta, l_count,
        sup_scale=sup_scale, un_scale=un_scale,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.train.max_grad_norm)
    optimizer.step()
    ema_update(teacher, student, ema_decay_at(step, cfg.train.ema_decay))
    return float(loss.detach()), terms


def train_loop_per_worker(
    config: dict[str, Any], report: ReportFn | None = None, on_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Train IOCNet (student + EMA teacher) on one pseudo-labelled set; DDP when distributed.

    config keys: "cfg" (CoplConfig as dict), "corpus" (root path), "video_ids" (training videos),
    "targets" ((N, C) label distributions; zero rows for U), "labelled" ((N,) bools),
    "num_classes", "iteration", "collect_votes" (bool); optional "device" (e.g. "cuda:0"; Ray Train
    sets the worker's own), "init_state" (a teacher state dict to start from), "resume_state" (a checkpoint from `report`, to continue after it), "voter" (an
    object with vote/state/restore; default LocalVoter). Each rank trains on its share of every
    global batch (DDP averages the gradients); rank 0 votes and checkpoints.
    `report(metrics, checkpoint)` is called after every epoch; metrics are the global batches' means
    (each rank's share, rank_share, averaged over ranks), checkpoint is None on ranks > 0.
    `on_step(step)`, if given, is called after each optimizer step with the number of steps taken so
    far in this training (fault injection in tests). Returns {"teacher", "votes", "history"}.
    """
    cfg = from_dict(config["cfg"], source="train config")
    corpus = Corpus.open(config["corpus"])
    video_ids: list[str] = list(config["video_ids"])
    device = torch.device(config.get("device") or "cpu")
    targets = torch.as_tensor(np.array(config["targets"], dtype=np.float32), device=device)
    labelled_np = np.array(config["labelled"], dtype=bool)
    labelled = torch.as_tensor(labelled_np, device=device)
    num_classes = int(config["num_classes"])
    iteration = int(config.get("iteration", 0))
    collect_votes = bool(config.get("collect_votes", False))
    rank, world = distributed_context()
    seed = cfg.seed

    student, teacher, optimizer = build_models(cfg, num_classes, iteration, device, config.get("init_state"))
    voter = config.get("voter") or (LocalVoter(corpus, video_ids, cfg) if collect_votes and rank == 0 else None)

    start_epoch, step, history = 0, 0, []
    resume = config.get("resume_state")
    if resume is not None:
        student.load_state_dict(resume["student"])  # load_state_dict copies onto the model's device
        teacher.load_state_dict(resume["teacher"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, step, history = int(resume["epoch"]) + 1, int(resume["step"]), list(resume["history"])
    if voter is not None and rank == 0:
        # Always: a voter outside the worker group (HAS actors) still holds the votes of an attempt
        # that died before its first checkpoint, which a restart would otherwise count twice.
        voter.restore((resume.get("votes") if resume is not None else None) or {})

    model: torch.nn.Module = student
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )

    batch = min(cfg.train.batch_size, len(video_ids))
    voting = has_lib.voting_epochs(cfg.train.epochs, cfg.has.alpha, cfg.has.vote_last, cfg.has.vote_tol, cfg.has.voting)
    for epoch in range(start_epoch, cfg.train.epochs):
        student.train()
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        batches = epoch_batches(len(video_ids), batch, world, seed, iteration, epoch)
        for b, global_idx in enumerate(batches):
            idx = np.array_split(global_idx, world)[rank]
            x, x_student = form_batch(corpus, video_ids, idx, cfg, iteration, epoch, b, device)
            torch.manual_seed(derive_seed(seed, STREAM_DROPOUT, iteration, epoch, b, rank))
            # DDP averages the ranks' gradients; scaling each rank's means by its share of the global
            # batch (and of its labelled videos) makes that average the global batch's means.
            sup_scale, un_scale = batch_scales(labelled_np, global_idx, idx, world)
            loss, terms = train_step(
                model, teacher, optimizer, x, x_student, targets[idx], labelled[idx], cfg, step,
                sup_scale=sup_scale, un_scale=un_scale,
            )
            step += 1
            # Logged like the gradients: the ranks' average is then the global batch's mean.
            share = rank_share(terms, loss, sup_scale, un_scale)
            for key in LOSS_KEYS:
                sums[key] += share[key]
            if on_step is not None:
                on_step(step)
        metrics = _all_reduce_mean({key: sums[key] / max(1, len(batches)) for key in LOSS_KEYS}, world)
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        if voter is not None and rank == 0 and collect_votes and epoch in voting:
            voter.vote(epoch, teacher)
        if report is not None:
            checkpoint = None
            if rank == 0:
                checkpoint = {
                    "epoch": epoch,
                    "step": step,
                    "student": student.state_dict(),
                    "teacher": teacher.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "votes": voter.state() if voter is not None else {},
                }
            report(metrics, checkpoint)
    return {
        "teacher": {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()},
        "votes": voter.state() if voter is not None else {},
        "history": history,
    }
