"""The CNN8 core of MOSAIC (Lahner et al., 2025), written from the published architecture.

Eight Conv(bias=False) → BatchNorm → ReLU blocks and four average pools; 224×224 input → (C, 26, 26).
Module names match the published checkpoint (``core.block1.0.weight`` …) so state_dicts load key for key.
"""

from __future__ import annotations

from torch import nn

#: (name, in_is_rgb, kernel, padding) in forward order; pools are interleaved by ``STAGE_ORDER``.
_BLOCKS = {
    "block1": (5, 1),  # padding 1 (not 2): 224 → 222, as published
    "block2": (5, 2),
    "block3": (3, 1),
    "block4": (3, 1),
    "block5": (3, 1),
    "block6": (3, 1),
    "block7": (3, 1),
    "block8": (3, 1),
}
STAGE_ORDER = ("block1", "block2", "pool1", "block3", "block4", "pool2",
          "block5", "block6", "pool3", "block7", "block8", "pool4")
WIDTH = 384
OUT_SPATIAL = 26


class CNN8Core(nn.Module):
    """CNN8 feature extractor.

    Parameters
    ----------
    width : int, default=384
        Channels of every block. The published model uses 384; smaller widths exist only for tests.
    """

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.width = width
        for name, (k, pad) in _BLOCKS.items():
            cin = 3 if name == "block1" else width
            self.add_module(name, nn.Sequential(
                nn.Conv2d(cin, width, kernel_size=k, stride=1, padding=pad, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ))
        self.pool1 = nn.AvgPool2d(2, 2)
        self.pool2 = nn.AvgPool2d(2, 2)
        self.pool3 = nn.AvgPool2d(2, 2)
        self.pool4 = nn.AvgPool2d(2, stride=1)

    def forward(self, x, start: int = 0):
        """Run the stages from ``start`` (0 = block1) to pool4."""
        for name in STAGE_ORDER[start:]:
            x = getattr(self, name)(x)
        return x
