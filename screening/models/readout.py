"""Factorised (feature × spatial) linear readouts, one per subject.

For core output x (N, C, H, W) and vertex o:
    Ŝ[o] = spatial[o] / (‖spatial[o]‖₂ + 1e-6)      (normalised at every forward, stored unnormalised)
    y[n,o] = bias[o] + Σ_c features[o,c] · Σ_ij x[n,c,i,j] · Ŝ[o,i,j]
y is affine in x, which is what makes the exact ROI collapse in ``encoder.collapse_heads`` possible.
"""

from __future__ import annotations

import torch
from torch import nn

SPATIAL_EPS = 1e-6


class FactorizedReadout(nn.Module):
    """One subject's vertex head; parameter names match the checkpoint (``_features``, ``spatial``, ``bias``)."""

    def __init__(self, n_vertices: int, channels: int, spatial: int = 26):
        super().__init__()
        self._features = nn.Parameter(torch.zeros(n_vertices, channels))
        self.spatial = nn.Parameter(torch.zeros(n_vertices, spatial, spatial))
        self.bias = nn.Parameter(torch.zeros(n_vertices))

    @property
    def n_vertices(self) -> int:
        return self.bias.shape[0]

    def normalized_spatial(self, rows=None, device=None) -> torch.Tensor:
        """Ŝ (V, H, W) of ``rows`` (all by default), computed on ``device`` (default: where the head is)."""
        s = self.spatial if rows is None else self.spatial[rows]
        s = s if device is None else s.to(device)
        norm = s.flatten(1).norm(dim=1)
        return s / (norm + SPATIAL_EPS)[:, None, None]

    @torch.no_grad()
    def select(self, rows) -> "FactorizedReadout":
        """A new head of only the vertices ``rows`` (copied, float32): the same outputs for those columns."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        with torch.device("meta"):
            out = FactorizedReadout(int(rows.numel()), self._features.shape[1], self.spatial.shape[-1])
        out.load_state_dict({"_features": self._features[rows].float(), "spatial": self.spatial[rows].float(),
                             "bias": self.bias[rows].float()}, assign=True)
        return out.requires_grad_(False)

    def forward(self, x: torch.Tensor, rows=None) -> torch.Tensor:
        """Vertex responses (N, V); ``rows`` (index tensor or slice) computes only those vertices."""
        s = self.normalized_spatial(rows)
        f = self._features if rows is None else self._features[rows]
        b = self.bias if rows is None else self.bias[rows]
        # (N, C, HW) @ (HW, V) -> (N, C, V); then weight channels per vertex.
        pooled = torch.matmul(x.flatten(2), s.flatten(1).T)
        return torch.einsum("ncv,vc->nv", pooled, f) + b
