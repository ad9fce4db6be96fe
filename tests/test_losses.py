"""IOCNet losses (Eqs. 15-22): hand-computed cases, masks, switches, and a short overfit run."""

import math

import pytest
import torch

from copl_dist.config import LossConfig
from copl_dist.method.augment import temporal_feature_shift
from copl_dist.method.losses import (
    asl_loss,
    ci_loss,
    cls_loss,
    co_loss,
    contrastive_loss,
    total_loss,
)
from copl_dist.method.model import (
    IOCNet,
    ema_update,
    make_teacher,
    selection_score,
    video_scores,
)

Q = 0.7


def _pos(a: float) -> float:
    return (1 - a**Q) / Q


def _neg(a: float) -> float:
    return (1 - (1 - a) ** Q) / Q


# ---------------------------------------------------------------- L_cls (Eq. 15)
def test_cls_loss_by_hand_and_masks():
    p = torch.tensor([[0.2, 0.8], [0.6, 0.4]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    one = -math.log(0.8)
    two = -(0.5 * math.log(0.6) + 0.5 * math.log(0.4))
    assert cls_loss(p, target).item() == pytest.approx((one + two) / 2, rel=1e-5)
    assert cls_loss(p, target, mask=torch.tensor([False, True])).item() == pytest.approx(two, rel=1e-5)
    empty = cls_loss(p, target, mask=torch.tensor([False, False]))
    assert empty.item() == 0.0
    empty.backward()  # still differentiable
    assert torch.all(p.grad == 0)


# ---------------------------------------------------------------- L_asl (Eq. 16)
H_HAND = torch.tensor([[[0.9, 0.1], [0.1, 0.2], [0.2, 0.8], [0.3, 0.3]]])  # (1, T=4, C=2)
A_HAND = torch.tensor([[0.5, 0.3, 0.2, 0.9]])


def test_asl_loss_by_hand():
    # l = 1: class 0 picks t=0, class 1 picks t=2.
    a = A_HAND.clone().requires_grad_(True)
    loss = asl_loss(a, H_HAND, torch.tensor([[1.0, 0.0]]), l=1, q=Q)
    assert loss.item() == pytest.approx(_pos(0.5) + _neg(0.2), rel=1e-5)  # S_p = {0}, S_n = {2}
    loss.backward()
    assert a.grad[0, 1] == 0 and a.grad[0, 3] == 0  # unselected snippets get no gradient
    assert a.grad[0, 0] < 0 and a.grad[0, 2] > 0  # positives pushed up, negatives down
    swapped = asl_loss(A_HAND, H_HAND, torch.tensor([[0.0, 1.0]]), l=1, q=Q)
    assert swapped.item() == pytest.approx(_pos(0.2) + _neg(0.5), rel=1e-5)


def test_asl_loss_shared_snippet_is_positive_and_empty_negatives_add_nothing():
    h = torch.tensor([[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.9, 0.8]]])  # both classes pick t=3
    loss = asl_loss(A_HAND, h, torch.tensor([[1.0, 0.0]]), l=1, q=Q)
    assert loss.item() == pytest.approx(_pos(0.9), rel=1e-5)


def test_asl_loss_two_videos_l2_and_mask():
    a = torch.cat([A_HAND, torch.tensor([[0.6, 0.7, 0.1, 0.4]])])
    h = torch.cat([H_HAND, H_HAND])
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # l = 2: class 0 picks {0, 3}, class 1 picks {2, 3}. Video 1: S_p = {0, 3}, S_n = {2}.
    v1 = (_pos(0.5) + _pos(0.9)) / 2 + _neg(0.2)
    # Video 2 is labelled with both classes: S_p = {0, 2, 3}, S_n empty.
    v2 = (_pos(0.6) + _pos(0.1) + _pos(0.4)) / 3
    assert asl_loss(a, h, target, l=2).item() == pytest.approx((v1 + v2) / 2, rel=1e-5)
    assert asl_loss(a, h, target, l=2, mask=torch.tensor([0.0, 1.0])).item() == pytest.approx(v2, rel=1e-5)


# ---------------------------------------------------------------- L_CI (Eqs. 18-20), L_CO (Eq. 21)
def test_ci_loss_by_hand():
    a_r, a_f = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])  # MSE 0.5
    a_cs, a_ca = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 1.0]])  # MSE 0.125
    assert ci_loss(a_r, a_f, a_cs, a_ca, mu1=5.0, mu2=0.1).item() == pytest.approx(2.5125)
    assert ci_loss(a_r, a_f, a_cs, a_ca, mu1=0.0, mu2=1.0).item() == pytest.approx(0.125)


def test_co_loss_zero_when_identical_and_gradient_to_student_only():
    torch.manual_seed(0)
    h_s, a_s = torch.rand(2, 5, 3, requires_grad=True), torch.rand(2, 5, requires_grad=True)
    h_t, a_t = h_s.detach().clone().requires_grad_(True), a_s.detach().clone().requires_grad_(True)
    assert co_loss(h_s, h_t, a_s, a_t).item() == 0.0
    with torch.no_grad():
        h_t += 0.5
    loss = co_loss(h_s, h_t, a_s, a_t)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert h_t.grad is None and a_t.grad is None
    assert h_s.grad is not None and torch.all(h_s.grad < 0)


# ---------------------------------------------------------------- L_C (AICL)
# Groups at the medians (0.5 for both): action {0, 1}, background {2, 3}, inconsistent {4, 5, 6, 7};
# A_c median 0.4875, so 4 and 5 lean to action, 6 and 7 to background.
A_CS = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.6, 0.4]])
A_CA = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.45, 0.7, 0.35, 0.55]])


def _embedding(action_like: list[int]) -> torch.Tensor:
    e = torch.zeros(1, 8, 4)
    for t in range(8):
        e[0, t, 0 if t in action_like else 1] = 3.0  # scale does not matter: L2-normalised
    return e


def test_contrastive_loss_by_hand_aligned_vs_misaligned():
    aligned = contrastive_loss(_embedding([0, 1, 4, 5]), A_CS, A_CA, ratio=0.5, temperature=0.1)
    assert aligned.item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=1e-6)
    misaligned = contrastive_loss(_embedding([0, 1, 6, 7]), A_CS, A_CA, ratio=0.5, temperature=0.1)
    assert misaligned.item() == pytest.approx(math.log(1 + 2 * math.exp(10)), rel=1e-5)
    assert aligned < misaligned


def test_contrastive_loss_random_finite_nonnegative_with_grad():
    torch.manual_seed(0)
    emb = torch.randn(3, 40, 16, requires_grad=True)
    a_cs, a_ca = torch.rand(3, 40), torch.rand(3, 40)
    loss = contrastive_loss(emb, a_cs, a_ca)
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_contrastive_loss_no_inconsistent_snippets_is_zero_with_grad():
    emb = torch.randn(1, 8, 4, requires_grad=True)
    loss = contrastive_loss(emb, A_CS, A_CS.clone())  # the branches agree everywhere
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(emb.grad == 0)


# ---------------------------------------------------------------- total_loss (Eq. 22)
TERMS = ("cls", "asl", "ci", "contrastive", "co")


def _weights(cfg: LossConfig) -> dict[str, float]:
    return {"cls": 1.0, "asl": 1.0, "ci": 1.0, "contrastive": cfg.lambda1, "co": cfg.lambda2}


@pytest.fixture()
def batch():
    torch.manual_seed(0)
    net = IOCNet(num_classes=3, feature_dim=8, hidden_dim=6, dropout=0.0)
    teacher = make_teacher(net)
    with torch.no_grad():  # a teacher that differs from the student, so L_CO is not zero
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 12, 8)
    target = torch.eye(3)[[0, 1, 2, 0]]
    labelled = torch.tensor([True, True, False, True])
    cfg = LossConfig(lambda1=0.5, lambda2=2.0, contrast_ratio=0.25)
    return net, teacher(x), net(temporal_feature_shift(x, channels=2)), target, labelled, cfg


def _grads(net: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(net.parameters(), grads)]


def test_total_loss_is_weighted_sum_of_terms(batch):
    net, t_out, s_out, target, labelled, cfg = batch
    loss, parts = total_loss(s_out, t_out, target, labelled, cfg, beta=1 / 3, l=3)
    assert set(parts) == {"loss", *TERMS}
    assert all(isinstance(v, float) for v in parts.values())
    w = _weights(cfg)
    assert parts["loss"] == pytest.approx(sum(w[k] * parts[k] for k in TERMS), rel=1e-5)
    assert all(parts[k] > 0 for k in TERMS)
    assert loss.requires_grad


@pytest.mark.parametrize("term", TERMS)
def test_total_loss_switches_each_term_off(batch, term):
    net, t_out, s_out, target, labelled, cfg = batch
    full, parts = total_loss(s_out, t_out, target, labelled, cfg, beta=1 / 3, l=3)
    off_cfg = LossConfig(**{**cfg.__dict__, term: False})
    off, off_parts = total_loss(s_out, t_out, target, labelled, off_cfg, beta=1 / 3, l=3)
    only_cfg = LossConfig(**{**cfg.__dict__, **{k: k == term for k in TERMS}})
    only, _ = total_loss(s_out, t_out, target, labelled, only_cfg, beta=1 / 3, l=3)
    w = _weights(cfg)[term]
    assert off_parts[term] == 0.0
    assert all(off_parts[k] == pytest.approx(parts[k]) for k in TERMS if k != term)
    assert off.item() == pytest.approx(full.item() - w * parts[term], rel=1e-5, abs=1e-6)
    assert only.item() == pytest.approx(w * parts[term], rel=1e-5)
    for g_full, g_off, g_only in zip(_grads(net, full), _grads(net, off), _grads(net, only)):
        torch.testing.assert_close(g_off, g_full - g_only, rtol=1e-4, atol=1e-6)


def test_total_loss_masks_select_labelled_videos(batch):
    net, t_out, s_out, target, labelled, cfg = batch
    _, parts = total_loss(s_out, t_out, target, labelled, cfg, beta=1 / 3, l=3)
    h = selection_score(s_out["cas"], s_out["a_ca_r"], s_out["a_ca_f"], 1 / 3)
    p = video_scores(s_out["cas"], h, 3)
    assert parts["cls"] == pytest.approx(cls_loss(p[labelled], target[labelled]).item(), rel=1e-5)
    asl = sum(asl_loss(s_out[k][labelled], h[labelled], target[labelled], 3).item() for k in ("a_ca_r", "a_ca_f"))
    assert parts["asl"] == pytest.approx(asl, rel=1e-5)
    # No labelled video: only L_un remains, and backward still works.
    none = torch.zeros(4, dtype=torch.bool)
    loss, parts = total_loss(s_out, t_out, target, none, cfg, beta=1 / 3, l=3)
    assert parts["cls"] == 0.0 and parts["asl"] == 0.0 and parts["ci"] > 0
    loss.backward()


def test_total_loss_rejects_non_finite(batch):
    net, t_out, s_out, target, labelled, cfg = batch
    bad = dict(s_out)
    bad["a_ca_r"] = s_out["a_ca_r"].detach().clone()
    bad["a_ca_r"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        total_loss(bad, t_out, target, labelled, cfg, beta=1 / 3, l=3)


def test_total_loss_without_teacher_needs_co_off(batch):
    net, t_out, s_out, target, labelled, cfg = batch
    no_co = LossConfig(**{**cfg.__dict__, "co": False})
    _, parts = total_loss(s_out, None, target, labelled, no_co, beta=1 / 3, l=3)
    assert parts["co"] == 0.0
    with pytest.raises(ValueError):
        total_loss(s_out, None, target, labelled, cfg, beta=1 / 3, l=3)


# ---------------------------------------------------------------- a short training run
def test_overfit_four_tiny_videos():
    torch.manual_seed(0)
    C, T, D = 2, 16, 8
    x = 0.1 * torch.randn(4, T, D)
    x[0, 4:8, 0] += 2.0  # class 0 action in RGB channel 0
    x[1, 8:12, 0] += 2.0
    x[2, 2:6, 5] += 2.0  # class 1 action in Flow channel 5
    x[3, 10:14, 5] += 2.0
    target = torch.eye(C)[[0, 0, 1, 1]]
    labelled = torch.tensor([True, True, True, False])
    net = IOCNet(num_classes=C, feature_dim=D, hidden_dim=16, dropout=0.0)
    teacher = make_teacher(net)
    optim = torch.optim.Adam(net.parameters(), lr=1e-2)
    cfg = LossConfig(contrast_ratio=0.25)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        with torch.no_grad():
            t_out = teacher(x)
        loss, parts = total_loss(net(temporal_feature_shift(x, 2, gen)), t_out, target, labelled, cfg, 1 / 3, 2)
        optim.zero_grad()
        loss.backward()
        optim.step()
        ema_update(teacher, net, decay=0.9)
        history.append(parts["loss"])
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5
    with torch.no_grad():
        out = net(x)
        p = video_scores(out["cas"], selection_score(out["cas"], out["a_ca_r"], out["a_ca_f"], 1 / 3), 2)
    assert p.argmax(-1)[:3].tolist() == [0, 0, 1]


def test_rank_scales_make_the_average_of_shards_the_global_batch():
    """Two DDP 'ranks' holding halves of a global batch, with the engine's scales, average to the
    global batch's loss and gradient (P means over labelled videos, L_un over all)."""
    torch.manual_seed(0)
    net = IOCNet(num_classes=3, feature_dim=8, hidden_dim=6, dropout=0.0)
    teacher = make_teacher(net)
    x = torch.randn(6, 12, 8)
    target = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    labelled = torch.tensor([True, True, True, False, False, True])  # 3 in the first half, 1 in the second
    cfg = LossConfig(contrastive=False)  # L_C averages over qualifying videos: not a per-video mean

    def grads(loss):
        net.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    with torch.no_grad():
        t_out = teacher(x)
    full, _ = total_loss(net(x), t_out, target, labelled, cfg, 1 / 3, 3)
    g_full = grads(full)
    shards = [slice(0, 3), slice(3, 6)]
    n_lab = int(labelled.sum())
    avg_loss, g_avg = 0.0, 0.0
    for sl in shards:
        sup_scale = 2 * int(labelled[sl].sum()) / n_lab
        t_part = {k: v[sl] for k, v in t_out.items()}
        part, _ = total_loss(net(x[sl]), t_part, target[sl], labelled[sl], cfg, 1 / 3, 3, sup_scale=sup_scale, un_scale=1.0)
        avg_loss = avg_loss + float(part) / 2
        g_avg = g_avg + grads(part) / 2
    assert avg_loss == pytest.approx(float(full), rel=1e-5)
    assert torch.allclose(g_avg, g_full, rtol=1e-4, atol=1e-6)
