"""The UNet as the ONNX backends run it: the same weights and arithmetic, a graph that quantizes well.

:class:`ExportProbability` is :class:`~stmwatch.models.unet.Probability` with each up-sampling
``ConvTranspose2d(kernel 2, stride 2)`` written as what it computes: a 1×1 convolution to 4× the
output channels (one set per position ``(a, b)`` of the 2×2 output block) followed by a pixel
shuffle, done channels-last (``N, H, W, (a, b, C) → N, 2H, 2W, C``). The two are equal up to
float32 rounding (``tests/test_unet.py``). Why: ONNX Runtime has no int8 ConvTranspose on the
CPU, so in the int8 model every up-sampling ran in float32 between a dequantize and a quantize,
with the int8 convolutions' channels-last layout transposed back and forth around it (a third of
the int8 run time); a 1×1 convolution quantizes like every other, and a channels-last shuffle lets
ONNX Runtime cancel those transposes. The sizes of the reshapes come from the input image's shape
(not from an int8 activation, which would need a dequantize just to be measured).

Eager torch (the ``torch`` backend) and training keep :class:`~stmwatch.models.unet.UNet` as it is.
"""
from __future__ import annotations

import torch
from torch import nn

from .unet import UNet


def shuffle_weights(up: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the 1×1 convolution that, followed by a channels-last pixel shuffle,
    equals ``up`` (kernel 2, stride 2): output channel ``(a·2 + b)·C + c`` is output channel ``c``
    at offset ``(a, b)`` (row, column) of each 2×2 block."""
    cin, cout, kh, kw = up.weight.shape
    if (kh, kw) != (2, 2) or tuple(up.stride) != (2, 2) or tuple(up.padding) != (0, 0):
        raise ValueError("only ConvTranspose2d(kernel 2, stride 2, no padding) is rewritten")
    weight = up.weight.detach().permute(2, 3, 1, 0).reshape(4 * cout, cin, 1, 1)  # (a, b, c) ← ci
    bias = up.bias.detach() if up.bias is not None else torch.zeros(cout)
    return weight.contiguous(), bias.repeat(4)


class ExportProbability(nn.Module):
    """``(B, C, H, W)`` → ``(B, H, W)`` probabilities, as :class:`~stmwatch.models.unet.Probability`
    of ``unet`` (eval mode), with the up-samplings rewritten (see the module docstring)."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.shuffles = nn.ModuleList()
        for up in unet.up:
            weight, bias = shuffle_weights(up)
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            self.shuffles.append(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, height, width = x.shape[0], x.shape[2], x.shape[3]
        unet, depth = self.unet, len(self.unet.down)
        x, skips = unet.encode(x)
        for level, (conv, merge, skip) in enumerate(zip(self.shuffles, unet.merge, reversed(skips))):
            h, w = height // 2 ** (depth - level), width // 2 ** (depth - level)  # the input's size here
            channels = conv.out_channels // 4
            y = conv(x).permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, channels)  # N, H, W, a, b, C
            y = y.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, channels)  # N, H, a, W, b, C
            x = merge(torch.cat([y.permute(0, 3, 1, 2), skip], dim=1))
        return torch.sigmoid(unet.head(x))[:, 0]
