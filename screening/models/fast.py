"""Inference-time rewrites of the core that keep fp32 numbers (within rounding) and run faster."""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm(core: nn.Module) -> nn.Module:
    """Return a copy of ``core`` with each eval-mode BatchNorm folded into the conv before it.

    conv(x)·γ/√(σ²+ε) + (β − μγ/√(σ²+ε)) is the same affine map as BN(conv(x)); one kernel instead of two.
    """
    core = copy.deepcopy(core).eval()
    for block in core.children():
        if not isinstance(block, nn.Sequential) or len(block) < 2:
            continue
        conv, bn = block[0], block[1]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        with torch.no_grad():
            scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, bias=True, device=conv.weight.device)
            fused.weight.copy_((conv.weight.double() * scale[:, None, None, None]).float())
            base = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
            fused.bias.copy_(((base - bn.running_mean.double()) * scale + bn.bias.double()).float())
        block[0] = fused
        block[1] = nn.Identity()
    return core
