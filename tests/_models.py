"""Small random models for tests, and an independent functional implementation of model-spec.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from screening.models.encoder import CNN8Multihead


def random_model(n_vertices: int, width: int = 8, subjects=None, seed: int = 0) -> CNN8Multihead:
    g = torch.Generator().manual_seed(seed)
    kw = {} if subjects is None else {"subjects": subjects}
    m = CNN8Multihead(n_vertices, width=width, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "core" in name else 1.0))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.num_batches_tracked.fill_(7)
    return m.eval()


def reference_forward(sd: dict, x_u8: torch.Tensor, subject: str) -> torch.Tensor:
    """model-spec.md, written from the formulas with functional ops only (no screening modules)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x_u8.double() / 255.0 - mean.double()) / std.double()
    pads = {1: 1, 2: 2}
    for b in range(1, 9):
        p = f"core.block{b}."
        x = F.conv2d(x, sd[p + "0.weight"].double(), padding=pads.get(b, 1))
        rm, rv = sd[p + "1.running_mean"].double(), sd[p + "1.running_var"].double()
        g, beta = sd[p + "1.weight"].double(), sd[p + "1.bias"].double()
        x = (x - rm.view(1, -1, 1, 1)) / torch.sqrt(rv.view(1, -1, 1, 1) + 1e-5) * g.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
        x = torch.relu(x)
        if b in (2, 4, 6):
            x = F.avg_pool2d(x, 2, 2)
        if b == 8:
            x = F.avg_pool2d(x, 2, 1)
    h = f"subject_readouts.{subject}_NSD."
    s = sd[h + "spatial"].double()
    s_hat = s / (torch.sqrt((s ** 2).sum(dim=(1, 2))) + 1e-6).view(-1, 1, 1)
    return torch.einsum("ncij,oij,oc->no", x, s_hat, sd[h + "_features"].double()) + sd[h + "bias"].double()
