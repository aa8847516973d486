"""Embedding networks: conv4 (the few-shot literature's four-block CNN) and a ResNet18.

Both take float32 ``(n, 2, 32, 32)`` crops. torchvision is not used (and no ImageNet weights can be
downloaded here), so the ResNet18 is written out below and trained from scratch.
"""
from __future__ import annotations

import torch
from torch import nn

from .crops import INPUT_CHANNELS


def conv_block(c_in: int, c_out: int, pool: bool = True) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU and (optionally) 2×2 max pooling."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv-BN-ReLU-pool blocks of ``width`` channels.

    ``pools`` says how many of the blocks pool (4 for a flat embedding: 32 px → 2×2 × width = 256
    features; the relation network keeps 8×8 feature maps with ``pools=2``). ``forward`` returns
    ``(n, width*h*w)`` when ``flatten`` else ``(n, width, h, w)``.
    """

    def __init__(self, in_channels: int = INPUT_CHANNELS, width: int = 64, pools: int = 4, flatten: bool = True):
        super().__init__()
        self.blocks = nn.Sequential(*[conv_block(in_channels if i == 0 else width, width, pool=i < pools)
                                      for i in range(4)])
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        return y.flatten(1) if self.flatten else y


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet18."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 as in He et al. 2016 (the network the method used with ImageNet weights): a 7×7/2
    stem and 3×3/2 max pool, then four stages of two basic blocks, 64-128-256-512 channels. A 32 px
    crop is 8 px wide after the stem and 1 px after the last stage (which keeps training on a CPU
    affordable). ``forward`` returns ``(n, 512)`` globally averaged features."""

    def __init__(self, in_channels: int = INPUT_CHANNELS, widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c_in, c, stride), BasicBlock(c, c)]
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


BACKBONES = {"conv4": Conv4, "resnet18": ResNet18}


def build_backbone(name: str) -> nn.Module:
    try:
        return BACKBONES[name]()
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
