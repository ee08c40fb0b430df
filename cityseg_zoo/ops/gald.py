"""Global Aggregation then Local Distribution (GALD-Net, Li et al., BMVC 2019; models.md §1).

GALD first *aggregates* long-range context on a downsampled map (a grouped dot-product non-local block, taken
from CGNL) and then *distributes* it back with a spatially varying mask predicted from local patches.

For a feature map ``u`` at 1/8 resolution (H x W)::

    d = down(u)                                   depthwise conv3x3 s2 (no padding) -> BN -> ReLU
    a = up(long_relation(d), H x W)               global aggregation, bilinear, align_corners=True
    m = sigmoid(up(dconv3(dconv2(dconv1(a)))))    local distribution mask
    GALD(u) = (a + a * m) + a                     note: ``u`` itself is not added back
"""
from __future__ import annotations

import torch
from torch import nn

from . import triton_kernels
from .resize import resize


def _depthwise_down(channels: int) -> nn.Sequential:
    """Depthwise conv3x3, stride 2, **padding 0, bias** -> BN -> ReLU (keys ``0``, ``1``): H -> floor((H-3)/2)+1."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, groups=channels, bias=True),
                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def grouped_dot_product(t: torch.Tensor, p: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    """CGNL's dot-product kernel with channel groups, no softmax, no scaling.

    Split the channels of ``t``, ``p``, ``g`` ([B, C, H, W]) into ``groups`` groups of C/groups. For group k,
    ``s_k = sum_{c,h,w} p_k * g_k`` (one scalar per sample) and the output is ``s_k * t_k``.
    """
    b, c, h, w = t.shape
    n = c // groups * h * w
    # [B, G, 1, n] @ [B, G, n, 1] -> [B, G, 1, 1]: the same reduction as the reference's bmm(p, g).
    s = p.reshape(b, groups, 1, n) @ g.reshape(b, groups, n, 1)
    return (s * t.reshape(b, groups, 1, n)).reshape(b, c, h, w)


class SpatialCGNL(nn.Module):
    """Grouped dot-product non-local block (CGNL with a linear kernel): the *global aggregation*.

    ``y = GN(z(grouped_dot_product(t(x), p(x), g(x)))) + x`` with 1x1 convs ``t``, ``p``, ``g`` (in -> inner,
    no bias), ``z`` (inner -> in, grouped, no bias) and GroupNorm(groups) ``gn``.
    """

    def __init__(self, in_ch: int, inner_ch: int, groups: int = 8):
        super().__init__()
        self.groups = groups
        self.t = nn.Conv2d(in_ch, inner_ch, 1, bias=False)
        self.p = nn.Conv2d(in_ch, inner_ch, 1, bias=False)
        self.g = nn.Conv2d(in_ch, inner_ch, 1, bias=False)
        self.z = nn.Conv2d(inner_ch, in_ch, 1, groups=groups, bias=False)
        self.gn = nn.GroupNorm(groups, in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = grouped_dot_product(self.t(x), self.p(x), self.g(x), self.groups)
        return self.gn(self.z(y)) + x


class LocalAttention(nn.Module):
    """The *local distribution* mask: ``a + a * sigmoid(up(dconv3(dconv2(dconv1(a)))))``.

    Three depthwise conv3x3 (stride 2, no padding, bias) -> BN -> ReLU stages shrink H as floor((H-3)/2)+1 each,
    so the input needs H, W >= 15.
    """

    min_size = 15

    def __init__(self, channels: int, align_corners: bool = True):
        super().__init__()
        self.dconv1 = _depthwise_down(channels)
        self.dconv2 = _depthwise_down(channels)
        self.dconv3 = _depthwise_down(channels)
        self.align_corners = align_corners

    def mask(self, a: torch.Tensor) -> torch.Tensor:
        m = self.dconv3(self.dconv2(self.dconv1(a)))
        return torch.sigmoid(resize(m, a.shape[-2:], self.align_corners))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a + a * self.mask(a)

    def forward_fused(self, a: torch.Tensor) -> torch.Tensor:
        """``2a + a·m`` (``distribute(a) + a``) with the mask's sigmoid and both sums in place: one temporary."""
        logits = resize(self.dconv3(self.dconv2(self.dconv1(a))), a.shape[-2:], self.align_corners)
        if triton_kernels.available(a, logits):
            return triton_kernels.gald_distribute_triton(a, logits)     # one pass on CUDA
        m = logits.sigmoid_()
        # (a + a·m) + a, summed in the reference's order: a·m + a is a + a·m exactly (addition commutes).
        return m.mul_(a).add_(a).add_(a)


class GALDBlock(nn.Module):
    """Global aggregation (downsample -> SpatialCGNL -> upsample) then local distribution.

    Output ``distribute(a) + a = 2a + a * m`` where ``a = aggregate(u)`` (the reference's ``a2block``).
    """

    benchmark_label = "GALD: fused in-place distribution"

    def __init__(self, channels: int, inner_ch: int, groups: int = 8, align_corners: bool = True):
        super().__init__()
        self.down = _depthwise_down(channels)
        self.long_relation = SpatialCGNL(channels, inner_ch, groups)
        self.local_attention = LocalAttention(channels, align_corners)
        self.align_corners = align_corners

    def aggregate(self, u: torch.Tensor) -> torch.Tensor:
        return resize(self.long_relation(self.down(u)), u.shape[-2:], self.align_corners)

    def distribute(self, a: torch.Tensor) -> torch.Tensor:
        return self.local_attention(a)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = self.aggregate(u)
        if torch.is_grad_enabled() and a.requires_grad:
            return self.distribute(a) + a
        return self.local_attention.forward_fused(a)   # the same value, without three full-size temporaries
