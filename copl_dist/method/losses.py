"""IOCNet's losses (§3.4.1, Eqs. 15-22), one pure function each.

Every loss returns a scalar: the mean over the videos that `mask` (B,) selects (all when None; a
float mask weights them). An empty mask gives 0 that still has a gradient, so backward always works.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from copl_dist.method.model import selection_score, topl_indices, video_scores

_EPS = 1e-6


def masked_mean(per_video: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of per-video values (B,) over the videos `mask` selects; 0 (with grad) when none are."""
    if mask is None:
        return per_video.mean()
    weight = mask.to(per_video.dtype).reshape(per_video.shape)
    # `where` (not a product) so that a NaN in a video left out cannot leak into the sum.
    total = torch.where(weight != 0, per_video * weight, per_video.new_zeros(())).sum()
    return total / weight.sum().clamp_min(_EPS)


def cls_loss(p: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Eq. 15: -sum_c y_c log p_c; p (B, C) from `video_scores`, target (B, C) rows summing to 1."""
    per_video = -(target * torch.log(p.clamp_min(_EPS))).sum(dim=-1)
    return masked_mean(per_video, mask)


def asl_loss(
    a_ca_m: Tensor, h_cs: Tensor, target: Tensor, l: int, q: float = 0.7, mask: Tensor | None = None
) -> Tensor:
    """Eq. 16 for one modality's class-agnostic attention a_ca_m (B, T).

    Selected snippets: the union over all classes of each class's top-l by h_cs (B, T, C). S_p: those
    selected for a labelled class (target > 0); S_n: the other selected ones. Per video,
    mean_{S_p} (1 - A^q)/q + mean_{S_n} (1 - (1 - A)^q)/q, an empty set adding 0. The selection
    carries no gradient; A does.
    """
    with torch.no_grad():
        idx = topl_indices(h_cs, l)  # (B, l, C)
        chosen = torch.zeros(h_cs.shape, dtype=torch.bool, device=h_cs.device)
        chosen.scatter_(1, idx, True)  # (B, T, C): snippet t is among class c's top-l
        selected = chosen.any(dim=-1)
        positive = (chosen & (target > 0).unsqueeze(1)).any(dim=-1)
        negative = selected & ~positive
    a = a_ca_m.clamp(_EPS, 1.0 - _EPS)  # A^q has an infinite slope at 0
    pos_term = (1.0 - a.pow(q)) / q
    neg_term = (1.0 - (1.0 - a).pow(q)) / q
    zero = a.new_zeros(())
    pos_mean = torch.where(positive, pos_term, zero).sum(-1) / positive.sum(-1).clamp_min(1)
    neg_mean = torch.where(negative, neg_term, zero).sum(-1) / negative.sum(-1).clamp_min(1)
    return masked_mean(pos_mean + neg_mean, mask)


def _mse_per_video(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def ci_loss(
    a_ca_r: Tensor, a_ca_f: Tensor, a_cs: Tensor, a_ca: Tensor, mu1: float, mu2: float, mask: Tensor | None = None
) -> Tensor:
    """Eqs. 18-20: L_CI = mu1 * MSE(A^R, A^F) (modality) + mu2 * MSE(A_cs, A_ca) (branch)."""
    per_video = mu1 * _mse_per_video(a_ca_r, a_ca_f) + mu2 * _mse_per_video(a_cs, a_ca)
    return masked_mean(per_video, mask)


def co_loss(
    h_student: Tensor, h_teacher: Tensor, aca_student: Tensor, aca_teacher: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Eq. 21: MSE(h_cs, h~_cs) + MSE(A_ca, A~_ca); the teacher's outputs are targets (detached)."""
    per_video = _mse_per_video(h_student, h_teacher.detach()) + _mse_per_video(aca_student, aca_teacher.detach())
    return masked_mean(per_video, mask)


def _median(a: Tensor) -> Tensor:
    """Per-video median (B, 1), averaging the two middle values like numpy (and has.py)."""
    return torch.quantile(a, 0.5, dim=1, keepdim=True)


def _top_in_group(score: Tensor, group: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices (B, k) of the k highest-scoring members of a boolean group (B, T) and which are real."""
    masked = score.masked_fill(~group, float("-inf"))
    top = torch.topk(masked, k, dim=1)
    return top.indices, torch.isfinite(top.values)


def _prototype(emb: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
    """L2-normalised mean of the valid gathered embeddings, (B, H); zeros when the group is empty."""
    picked = emb.gather(1, idx.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))  # (B, k, H)
    w = valid.to(emb.dtype).unsqueeze(-1)
    mean = (picked * w).sum(1) / w.sum(1).clamp_min(1.0)
    return F.normalize(mean, dim=-1)


def contrastive_loss(
    embedding: Tensor,
    a_cs: Tensor,
    a_ca: Tensor,
    ratio: float = 0.05,
    temperature: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """L_C, the contrastive loss of AICL [24] over snippet embeddings (B, T, H). The project's reading:

    1. Binarise A_cs and A_ca at their per-video medians (Eq. 1); snippets where both are 1 form the
       consistent-action group, both 0 the consistent-background group, the rest the inconsistent group.
    2. Per video keep the top k = max(1, int(T * ratio)) of each group: by A_c = (A_cs + A_ca)/2 for
       action, by 1 - A_c for background, by |A_cs - A_ca| for inconsistent (hardest first).
    3. Embeddings are L2-normalised; a prototype is the L2-normalised mean of a group's embeddings.
    4. Each kept inconsistent snippet e_i with A_c >= median(A_c) is pulled to the action prototype
       against the background embeddings; otherwise to the background prototype against the action
       embeddings: loss_i = -log(exp(e_i.p/tau) / (exp(e_i.p/tau) + sum_n exp(e_i.n/tau))).
    Mean over i, then over the videos that have all three groups (others add nothing). The selection
    carries no gradient; the embeddings do.
    """
    B, T, _ = embedding.shape
    k = max(1, min(T, int(T * ratio)))
    with torch.no_grad():
        a_cs_d, a_ca_d = a_cs.detach(), a_ca.detach()
        b_cs = a_cs_d > _median(a_cs_d)
        b_ca = a_ca_d > _median(a_ca_d)
        a_c = (a_cs_d + a_ca_d) / 2
        act_idx, act_ok = _top_in_group(a_c, b_cs & b_ca, k)
        bkg_idx, bkg_ok = _top_in_group(1.0 - a_c, ~b_cs & ~b_ca, k)
        inc_idx, inc_ok = _top_in_group((a_cs_d - a_ca_d).abs(), b_cs ^ b_ca, k)
        toward_action = a_c.gather(1, inc_idx) >= _median(a_c)  # (B, k)
        has_groups = act_ok.any(1) & bkg_ok.any(1)  # (B,)
        term_ok = inc_ok & has_groups.unsqueeze(1)  # (B, k)

    emb = F.normalize(embedding, dim=-1)
    hdim = emb.shape[-1]

    def gather(idx: Tensor) -> Tensor:
        return emb.gather(1, idx.unsqueeze(-1).expand(-1, -1, hdim))  # (B, k, H)

    e_inc, e_act, e_bkg = gather(inc_idx), gather(act_idx), gather(bkg_idx)
    proto_act, proto_bkg = _prototype(emb, act_idx, act_ok), _prototype(emb, bkg_idx, bkg_ok)
    pos_act = (e_inc * proto_act.unsqueeze(1)).sum(-1)  # (B, k)
    pos_bkg = (e_inc * proto_bkg.unsqueeze(1)).sum(-1)
    positive = torch.where(toward_action, pos_act, pos_bkg) / temperature  # (B, k)
    # Negatives: background snippets for action-leaning ones, action snippets for the others.
    neg_bkg = torch.einsum("bih,bjh->bij", e_inc, e_bkg).masked_fill(~bkg_ok.unsqueeze(1), float("-inf"))
    neg_act = torch.einsum("bih,bjh->bij", e_inc, e_act).masked_fill(~act_ok.unsqueeze(1), float("-inf"))
    negatives = torch.where(toward_action.unsqueeze(-1), neg_bkg, neg_act) / temperature  # (B, k, k)
    logits = torch.cat([positive.unsqueeze(-1), negatives], dim=-1)
    per_term = torch.logsumexp(logits, dim=-1) - positive  # -log softmax of the positive, >= 0
    zero = per_term.new_zeros(())
    count = term_ok.sum(1)
    per_video = torch.where(term_ok, per_term, zero).sum(1) / count.clamp_min(1)
    video_ok = count > 0
    weight = video_ok.to(per_video.dtype)
    if mask is not None:
        weight = weight * mask.to(per_video.dtype).reshape(B)
    return masked_mean(per_video, weight)


def total_loss(
    student_out: dict[str, Tensor],
    teacher_out: dict[str, Tensor] | None,
    target: Tensor,
    labelled_mask: Tensor,
    cfg_loss: Any,
    beta: float,
    l: int,
    sup_scale: float = 1.0,
    un_scale: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 22 over a batch: L = L_cls + L_asl (pseudo-labelled videos, P) + L_un (all videos),
    L_un = L_CI + lambda1 * L_C + lambda2 * L_CO.

    L_cls and L_asl are means over the labelled videos of the batch, L_un a mean over all of them.
    L_asl sums Eq. 16 over the two modalities. `cfg_loss` is a `copl_dist.config.LossConfig`; a term
    switched off is not computed. `teacher_out` (the teacher on unshifted features) may be None when
    L_CO is off. `sup_scale` / `un_scale` multiply the P and the L_un parts of the returned loss: under
    DDP each rank holds part of a global batch, and these make the ranks' average equal the global
    batch's means (engine.train_loop_per_worker). Returns the loss and the unweighted, unscaled term
    values as floats (0.0 when off).
    Raises FloatingPointError on a non-finite loss.
    """
    s = student_out
    h_student = selection_score(s["cas"], s["a_ca_r"], s["a_ca_f"], beta)
    labelled = labelled_mask.to(torch.bool)
    zero = (s["cas"] * 0).sum()  # a zero attached to the graph, whatever is switched off
    sup, un = zero, zero
    terms: dict[str, Tensor] = {}
    if cfg_loss.cls:
        terms["cls"] = cls_loss(video_scores(s["cas"], h_student, l), target, mask=labelled)
        sup = sup + terms["cls"]
    if cfg_loss.asl:
        terms["asl"] = asl_loss(s["a_ca_r"], h_student, target, l, q=cfg_loss.q, mask=labelled) + asl_loss(
            s["a_ca_f"], h_student, target, l, q=cfg_loss.q, mask=labelled
        )
        sup = sup + terms["asl"]
    if cfg_loss.ci:
        terms["ci"] = ci_loss(s["a_ca_r"], s["a_ca_f"], s["a_cs"], s["a_ca"], cfg_loss.mu1, cfg_loss.mu2)
        un = un + terms["ci"]
    if cfg_loss.contrastive:
        terms["contrastive"] = contrastive_loss(
            s["embedding"], s["a_cs"], s["a_ca"], ratio=cfg_loss.contrast_ratio, temperature=cfg_loss.temperature
        )
        un = un + cfg_loss.lambda1 * terms["contrastive"]
    if cfg_loss.co:
        if teacher_out is None:
            raise ValueError("total_loss: L_CO is on but no teacher output was given")
        t = teacher_out
        h_teacher = selection_score(t["cas"], t["a_ca_r"], t["a_ca_f"], beta).detach()
        terms["co"] = co_loss(h_student, h_teacher, s["a_ca"], t["a_ca"].detach())
        un = un + cfg_loss.lambda2 * terms["co"]
    parts = {"loss": float((sup + un).detach())}
    loss = sup * sup_scale + un * un_scale if (sup_scale != 1.0 or un_scale != 1.0) else sup + un
    for name in ("cls", "asl", "ci", "contrastive", "co"):
        parts[name] = float(terms[name].detach()) if name in terms else 0.0
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"non-finite loss {parts}")
    return loss, parts
