"""IOCNet (§3.4): a class-specific and a class-agnostic branch, the action selection score, and the
EMA teacher.

Shapes: x (B, T, D) with D = [RGB D/2 | Flow D/2]; CAS logits (B, T, C); attentions (B, T).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _agnostic_head(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """One modality of the class-agnostic branch: Conv(k=3) + ReLU + dropout, Conv(k=1) -> 1 logit."""
    return nn.Sequential(
        nn.Conv1d(in_dim, hidden_dim, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Conv1d(hidden_dim, 1, kernel_size=1),
    )


class IOCNet(nn.Module):
    """Inner- and outer-consistency network: student and teacher share this architecture."""

    def __init__(
        self, num_classes: int, feature_dim: int = 2048, hidden_dim: int = 512, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if feature_dim < 2 or feature_dim % 2:
            raise ValueError(f"feature_dim must be even (RGB | Flow), got {feature_dim}")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        # Class-specific branch on the concatenated features.
        self.cs_conv = nn.Conv1d(feature_dim, hidden_dim, kernel_size=3, padding=1)
        self.cs_dropout = nn.Dropout(dropout)
        self.cs_classifier = nn.Conv1d(hidden_dim, num_classes, kernel_size=1)
        # Class-agnostic branch: one head per modality (late fusion, Eq. 13).
        half = feature_dim // 2
        self.ca_rgb = _agnostic_head(half, hidden_dim, dropout)
        self.ca_flow = _agnostic_head(half, hidden_dim, dropout)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x (B, T, D) -> cas (B, T, C), a_cs (Eq. 11), a_ca_r / a_ca_f (Eq. 12), a_ca (Eq. 13),
        embedding (B, T, H)."""
        if x.dim() != 3 or x.shape[-1] != self.feature_dim:
            raise ValueError(f"IOCNet expects (B, T, {self.feature_dim}) features, got {tuple(x.shape)}")
        if x.is_cuda:
            return self._forward_conv(x)
        return self._forward_gemm(x)

    def _forward_gemm(self, x: Tensor) -> dict[str, Tensor]:
        """The forward on the CPU: the three k=3 convolutions as GEMMs on one unfolded copy of the
        features, whose forward and backward ran 1.13x faster than oneDNN's convolutions of these
        shapes on 2 cores (docs/results.md). The same weights and the same outputs up to float rounding; in training,
        dropout draws its masks over (B*T, H) rather than (B, H, T), so the random path differs."""
        b, t, d = x.shape
        half = d // 2
        u = _unfold_k3(x)  # (B*T, 3D): [RGB t-1, t, t+1 | Flow t-1, t, t+1]
        hidden = F.relu(torch.addmm(self.cs_conv.bias, u, _k3_weight(self.cs_conv.weight, modalities=2)))
        cas = _pointwise(self.cs_classifier, self.cs_dropout(hidden)).view(b, t, -1)  # (B, T, C)
        # Column slices of u: each modality's three time steps, read in place (BLAS takes the stride).
        a_ca_r = torch.sigmoid(_agnostic(self.ca_rgb, u[:, : 3 * half]).view(b, t))  # Eq. 12, (B, T)
        a_ca_f = torch.sigmoid(_agnostic(self.ca_flow, u[:, 3 * half :]).view(b, t))
        return _outputs(cas, a_ca_r, a_ca_f, hidden.view(b, t, -1))

    def _forward_conv(self, x: Tensor) -> dict[str, Tensor]:
        """The forward on a GPU: the Conv1d modules (cuDNN, TF32 where torch allows it for
        convolutions; the GEMM path would hold a 3x copy of the features for backward)."""
        xc = x.transpose(1, 2)  # (B, D, T): Conv1d runs over time
        hidden = F.relu(self.cs_conv(xc))  # (B, H, T)
        cas = self.cs_classifier(self.cs_dropout(hidden)).transpose(1, 2)  # (B, T, C)
        half = self.feature_dim // 2
        a_ca_r = torch.sigmoid(self.ca_rgb(xc[:, :half]).squeeze(1))  # Eq. 12, (B, T)
        a_ca_f = torch.sigmoid(self.ca_flow(xc[:, half:]).squeeze(1))
        return _outputs(cas, a_ca_r, a_ca_f, hidden.transpose(1, 2))


def _outputs(cas: Tensor, a_ca_r: Tensor, a_ca_f: Tensor, embedding: Tensor) -> dict[str, Tensor]:
    return {
        "cas": cas,
        "a_cs": torch.sigmoid(cas.sum(dim=-1)),  # Eq. 11
        "a_ca_r": a_ca_r,
        "a_ca_f": a_ca_f,
        "a_ca": (a_ca_r + a_ca_f) / 2,  # Eq. 13
        # Before dropout, so the contrastive loss sees the same embedding in train and eval mode.
        "embedding": embedding,  # (B, T, H)
    }


def _unfold_k3(x: Tensor) -> Tensor:
    """(B, T, D) -> (B*T, 3D): row (b, t) holds the RGB half at t-1, t, t+1, then the Flow half at
    t-1, t, t+1, zeros beyond the video's ends (a k=3 convolution's padding=1)."""
    b, t, d = x.shape
    half = d // 2
    u = x.new_empty(b, t, 2, 3, half)
    xv = x.reshape(b, t, 2, half)
    u[:, 1:, :, 0] = xv[:, :-1]
    u[:, 0, :, 0] = 0
    u[:, :, :, 1] = xv
    u[:, :-1, :, 2] = xv[:, 1:]
    u[:, -1, :, 2] = 0
    return u.view(b * t, 3 * d)


def _k3_weight(weight: Tensor, modalities: int) -> Tensor:
    """A Conv1d(k=3) weight (H, D, 3) as the (3D, H) matrix for `_unfold_k3`'s rows: D split into
    `modalities` consecutive halves, each with its three time steps."""
    h, d, k = weight.shape
    return weight.view(h, modalities, d // modalities, k).permute(1, 3, 2, 0).reshape(k * d, h)


def _pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A Conv1d(k=1) on rows of (N, H) features."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def _agnostic(head: nn.Sequential, u: Tensor) -> Tensor:
    """`_agnostic_head`'s layers on one modality's unfolded rows (N, 3 D/2) -> (N, 1) logits."""
    conv, relu, dropout, out = head
    return _pointwise(out, dropout(relu(torch.addmm(conv.bias, u, _k3_weight(conv.weight, modalities=1)))))


def selection_score(cas: Tensor, a_ca_r: Tensor, a_ca_f: Tensor, beta: float) -> Tensor:
    """Action selection score h_cs (Eq. 14), (B, T, C).

    h = beta * softmax_c(CAS) + (1 - beta) * (A^R + A^F) / 2: the (1 - beta) share is split equally
    between the modalities, so beta = 1/3 gives ASL's (softmax + A^R + A^F) / 3 and h stays in [0, 1].
    """
    agnostic = (a_ca_r + a_ca_f) / 2  # (B, T)
    return beta * torch.softmax(cas, dim=-1) + (1.0 - beta) * agnostic.unsqueeze(-1)


def topl_count(T: int, ratio: float) -> int:
    """l, the number of snippets selected per class: max(1, int(T * ratio)), at most T."""
    return max(1, min(int(T), int(T * ratio)))


def topl_indices(h_cs: Tensor, l: int) -> Tensor:
    """(B, l, C) indices of each class's top-l snippets by h_cs; no gradient (a selection)."""
    l = max(1, min(int(l), h_cs.shape[1]))
    return torch.topk(h_cs.detach(), l, dim=1).indices


def video_scores(cas: Tensor, h_cs: Tensor, l: int) -> Tensor:
    """Video prediction p (B, C) for Eq. 15: softmax over classes of each class's mean CAS logit on
    its top-l snippets by h_cs. The gradient flows through CAS only."""
    idx = topl_indices(h_cs, l)  # (B, l, C)
    pooled = cas.gather(1, idx).mean(dim=1)  # (B, C)
    return torch.softmax(pooled, dim=-1)


M = TypeVar("M", bound=nn.Module)


def make_teacher(student: M) -> M:
    """The EMA teacher: a copy of the student with gradients off, in eval mode."""
    teacher = copy.deepcopy(student)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student for parameters; buffers are copied."""
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("ema_update: teacher and student have different parameters")
    for name, t_param in t_params.items():
        t_param.mul_(decay).add_(s_params[name].detach(), alpha=1.0 - decay)
    s_buffers = dict(student.named_buffers())
    for name, t_buf in teacher.named_buffers():
        t_buf.copy_(s_buffers[name])


class ExportedTeacher(nn.Module):
    """IOCNet with one tensor out, for MLflow and serving (which want a single output tensor).

    forward(x (B, T, D)) -> (B, T, C + 3): [CAS logits | A_cs | A_ca^R | A_ca^F].
    """

    def __init__(self, model: IOCNet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        extras = torch.stack([out["a_cs"], out["a_ca_r"], out["a_ca_f"]], dim=-1)
        return torch.cat([out["cas"], extras], dim=-1)
