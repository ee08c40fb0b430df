"""Graph reasoning of DGCNet (Dual Graph Convolutional Network, Zhang et al., BMVC 2019; models.md §2).

Two graphs over the same feature map X (C channels, H x W):

* **coordinate space** (``SpatialGCN`` on a 1/8-downsampled copy of X): nodes are pixels; the adjacency comes from
  a channel-by-channel affinity ``softmax(Q Vᵀ)``;
* **feature space** (``DualGCN.feature_gcn``): X is projected onto C/4 nodes, a GCN ``(I - A_g) Z W_g`` runs over
  them, and the result is projected back.

``DualGCN`` fuses the two with ``final(cat[coordinate, feature])``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import float32_island, upcast
from .resize import resize


def _no_grad_needed(*tensors: torch.Tensor) -> bool:
    """True when in-place updates are safe: no autograd graph will read these tensors."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def residual_relu(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``ReLU(y + x)``; in place on ``y`` (a fresh layer output) when no gradient is needed."""
    return y.add_(x).relu_() if _no_grad_needed(x, y) else F.relu(y + x)


class SpatialGCN(nn.Module):
    """Coordinate-space GCN: ``ReLU(out(W_g(K · softmax(Q Vᵀ))) + X)``.

    With K, Q, V the 1x1 projections ``node_k/q/v`` (C -> C/2, bias) of X flattened to [N, C/2, HW]:
    ``A = softmax_row(Q Vᵀ)`` is [N, C/2, C/2]; the graph output ``R = (Kᵀ A)ᵀ`` is [N, C/2, HW];
    ``W_g`` = Conv1d(k=1, no bias) + BatchNorm1d (``conv_wg``, ``bn_wg``); ``out`` = conv1x1(C/2 -> C, bias) + BN.
    In low precision the affinity ``Q Vᵀ`` (a sum over every pixel) and its softmax are computed in float32.
    """

    fold_pairs = (("conv_wg", "bn_wg"),)   # see DualGCN.fold_pairs

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 2
        self.node_k = nn.Conv2d(channels, inner, 1)
        self.node_v = nn.Conv2d(channels, inner, 1)
        self.node_q = nn.Conv2d(channels, inner, 1)
        self.conv_wg = nn.Conv1d(inner, inner, 1, bias=False)
        self.bn_wg = nn.BatchNorm1d(inner)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.node_k(x).flatten(2)   # [N, c, HW]
        q = self.node_q(x).flatten(2)
        v = self.node_v(x).flatten(2)
        with float32_island(x):
            adjacency = torch.softmax(upcast(q) @ upcast(v).transpose(1, 2), dim=2)     # [N, c, c], float32
            r = (k.transpose(1, 2) @ adjacency.to(k.dtype)).transpose(1, 2)             # [N, c, HW]
        r = self.bn_wg(self.conv_wg(r)).reshape(k.shape[0], -1, *x.shape[-2:])
        return residual_relu(self.out(r), x)


class DualGCN(nn.Module):
    """DGCNet's dual graph block: ``final(cat[coordinate_gcn(X), feature_gcn(X)])`` (conv1x1 + BN, no ReLU).

    * ``coordinate_gcn(X) = X * up(SpatialGCN(local(X))) + X``; ``local`` is three depthwise conv3x3 (stride 2,
      padding 1, no bias), each followed by BN and no ReLU (keys ``local.0..5``).
    * ``feature_gcn(X) = ReLU(X + bn3(conv3(Z' B)))`` with the projection ``B = bn_theta(theta(X))``
      ([N, C/ratio, HW]), the reduced features ``P = bn_phi(phi(X))`` ([N, 2C/ratio, HW]), the node features
      ``Z = P Bᵀ`` ([N, 2C/ratio, C/ratio]) and the GCN ``Z' = W_g((I - A_g) Z)``: ``A_g`` = ``conv_adj`` +
      ``bn_adj`` mixing the nodes (Conv1d over Zᵀ), ``W_g`` = ``conv_wg`` + ``bn_wg`` mixing the states.
    """

    benchmark_label = "GCN: fused residuals"
    # (conv, norm) attribute pairs whose forward is norm(conv(x)) with nothing between (optimize.fold_batchnorms)
    fold_pairs = (("theta", "bn_theta"), ("phi", "bn_phi"), ("conv_adj", "bn_adj"), ("conv_wg", "bn_wg"),
                  ("conv3", "bn3"))

    def __init__(self, channels: int, ratio: int = 4, align_corners: bool = True):
        super().__init__()
        nodes, states = channels // ratio, channels // ratio * 2
        self.phi = nn.Conv2d(channels, states, 1, bias=False)
        self.bn_phi = nn.BatchNorm2d(states)
        self.theta = nn.Conv2d(channels, nodes, 1, bias=False)
        self.bn_theta = nn.BatchNorm2d(nodes)
        self.conv_adj = nn.Conv1d(nodes, nodes, 1, bias=False)
        self.bn_adj = nn.BatchNorm1d(nodes)
        self.conv_wg = nn.Conv1d(states, states, 1, bias=False)
        self.bn_wg = nn.BatchNorm1d(states)
        self.conv3 = nn.Conv2d(states, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        layers = []
        for _ in range(3):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                       nn.BatchNorm2d(channels)]
        self.local = nn.Sequential(*layers)
        self.gcn_local_attention = SpatialGCN(channels)
        self.final = nn.Sequential(nn.Conv2d(channels * 2, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.align_corners = align_corners

    def coordinate_gcn(self, x: torch.Tensor) -> torch.Tensor:
        local = self.gcn_local_attention(self.local(x))
        local = resize(local, x.shape[-2:], self.align_corners)
        if _no_grad_needed(x, local):
            return torch.addcmul(x, x, local)            # x·local + x in one fused pass
        return x * local + x

    def feature_gcn(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bn_theta(self.theta(x)).flatten(2)                    # projection B: [N, nodes, HW]
        p = self.bn_phi(self.phi(x)).flatten(2)                        # [N, states, HW]
        z_idt = p @ b.transpose(1, 2)                                  # Z: [N, states, nodes]
        z = self.bn_adj(self.conv_adj(z_idt.transpose(1, 2))).transpose(1, 2)
        z = z + z_idt                                                  # (I - A_g) Z, with the sign inside A_g
        z = self.bn_wg(self.conv_wg(z))
        y = (z @ b).reshape(x.shape[0], -1, *x.shape[-2:])             # re-projection: [N, states, H, W]
        return residual_relu(self.bn3(self.conv3(y)), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.coordinate_gcn(x), self.feature_gcn(x)], dim=1))
