"""IOCNet: shapes, Eqs. 11-14, video scores, EMA teacher."""

import math

import pytest
import torch

from copl_dist.method.model import (
    IOCNet,
    ema_update,
    make_teacher,
    selection_score,
    topl_count,
    video_scores,
)


def test_forward_shapes_and_attention_equations():
    torch.manual_seed(0)
    net = IOCNet(num_classes=5).eval()
    out = net(torch.randn(2, 16, 2048))
    assert out["cas"].shape == (2, 16, 5)
    for key in ("a_cs", "a_ca_r", "a_ca_f", "a_ca"):
        assert out[key].shape == (2, 16)
    assert out["embedding"].shape == (2, 16, 512)
    assert torch.all(out["embedding"] >= 0)  # after ReLU
    torch.testing.assert_close(out["a_cs"], torch.sigmoid(out["cas"].sum(-1)))  # Eq. 11
    torch.testing.assert_close(out["a_ca"], (out["a_ca_r"] + out["a_ca_f"]) / 2)  # Eq. 13
    assert torch.all((out["a_ca_r"] > 0) & (out["a_ca_r"] < 1))


def test_modalities_read_their_own_half():
    torch.manual_seed(0)
    net = IOCNet(num_classes=3, feature_dim=8, hidden_dim=4).eval()
    x = torch.randn(1, 6, 8)
    out = net(x)
    x2 = x.clone()
    x2[..., 4:] += 5.0  # change Flow only
    out2 = net(x2)
    torch.testing.assert_close(out["a_ca_r"], out2["a_ca_r"])
    assert not torch.allclose(out["a_ca_f"], out2["a_ca_f"])


@pytest.mark.parametrize("shape", [(3, 9, 8), (2, 1, 8), (1, 2, 6), (2, 40, 64)])
def test_the_convolutions_as_gemms_equal_conv1d(shape):
    """On the CPU the forward runs the k=3 convolutions as GEMMs on unfolded features: the same
    outputs and weight gradients as the Conv1d modules (the GPU's forward), including the zero
    padding at both ends of a video and features that are not contiguous."""
    torch.manual_seed(0)
    b, t, d = shape
    net = IOCNet(num_classes=3, feature_dim=d, hidden_dim=5, dropout=0.0)
    x = torch.randn(b, d, t).transpose(1, 2)  # (B, T, D), not contiguous
    out, ref = net(x), net._forward_conv(x)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5)
    grads = []
    for result in (out, ref):
        net.zero_grad()
        (result["cas"].square().sum() + result["a_ca_r"].sum() + 2 * result["a_ca_f"].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        IOCNet(num_classes=2, feature_dim=7)
    net = IOCNet(num_classes=2, feature_dim=8, hidden_dim=4)
    with pytest.raises(ValueError):
        net(torch.randn(1, 5, 6))


def test_selection_score_beta_third_is_asl_average():
    torch.manual_seed(0)
    cas, a_r, a_f = torch.randn(2, 7, 4), torch.rand(2, 7), torch.rand(2, 7)
    h = selection_score(cas, a_r, a_f, beta=1 / 3)
    expected = (torch.softmax(cas, -1) + a_r.unsqueeze(-1) + a_f.unsqueeze(-1)) / 3
    torch.testing.assert_close(h, expected)
    assert h.shape == (2, 7, 4)
    torch.testing.assert_close(selection_score(cas, a_r, a_f, beta=1.0), torch.softmax(cas, -1))


def test_topl_count():
    assert topl_count(750, 1 / 8) == 93
    assert topl_count(50, 0.5) == 25
    assert topl_count(5, 1 / 8) == 1  # at least one
    assert topl_count(4, 1.0) == 4


def test_video_scores_by_hand():
    # T = 4, C = 2, l = 2.
    cas = torch.tensor([[[1.0, 0.0], [3.0, 1.0], [2.0, 5.0], [0.0, 2.0]]])
    h = torch.tensor([[[0.9, 0.1], [0.1, 0.7], [0.8, 0.6], [0.2, 0.2]]])
    # class 0: top-2 snippets {0, 2} -> mean(1, 2) = 1.5; class 1: {1, 2} -> mean(1, 5) = 3.
    p = video_scores(cas, h, l=2)
    e = math.exp(1.5)
    torch.testing.assert_close(p, torch.tensor([[1 / (1 + e), e / (1 + e)]]))


def test_video_scores_gradient_only_through_selected_cas():
    cas = torch.zeros(1, 4, 2, requires_grad=True)
    h = torch.tensor([[[0.9, 0.1], [0.1, 0.7], [0.8, 0.6], [0.2, 0.2]]])
    video_scores(cas, h, l=1)[0, 0].backward()
    nonzero = (cas.grad != 0).nonzero().tolist()
    assert sorted(nonzero) == [[0, 0, 0], [0, 1, 1]]  # class 0 at t=0, class 1 at t=1


def test_teacher_has_no_grad_and_is_a_copy():
    student = IOCNet(num_classes=2, feature_dim=8, hidden_dim=4)
    teacher = make_teacher(student)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for ps, pt in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(ps, pt) and ps.data_ptr() != pt.data_ptr()


def test_ema_update_by_hand():
    student = IOCNet(num_classes=2, feature_dim=8, hidden_dim=4)
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(2.0)
        for p in student.parameters():
            p.fill_(4.0)
    ema_update(teacher, student, decay=0.5)
    for p in teacher.parameters():
        assert torch.all(p == 3.0)  # 0.5 * 2 + 0.5 * 4
    ema_update(teacher, student, decay=0.5)
    for p in teacher.parameters():
        assert torch.all(p == 3.5)
    for p in student.parameters():
        assert torch.all(p == 4.0)  # the student is untouched
    assert all(not p.requires_grad for p in teacher.parameters())


def test_ema_update_copies_buffers():
    student = torch.nn.BatchNorm1d(3)
    teacher = make_teacher(student)
    student.running_mean.fill_(7.0)
    ema_update(teacher, student, decay=0.9)
    assert torch.all(teacher.running_mean == 7.0)
