"""ResNets for CIFAR-10 (He et al. 2016, Section 4.2) with option-A shortcuts.

Parameter names match the widely used pretrained checkpoints of akamaster/pytorch_resnet_cifar10
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``, ``layer{1,2,3}.{i}.bn{1,2}``, ``linear``), so
those weights load with :func:`convspectra.models.load_weights`.

Depth ``6n + 2``: a 3x3 stem (3→16), three stages of ``n`` basic blocks with 16, 32 and 64
channels (the first block of stages 2 and 3 has stride 2), global average pooling and a linear
classifier. Every convolution is 3x3 with zero padding 1 and no bias. The option-A shortcut of a
downsampling block subsamples the input by 2 and zero-pads the channels (no weights).

Example:
    >>> import torch
    >>> from convspectra.models import resnet20
    >>> model = resnet20()
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    19

References:
    K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError

__all__ = ["BasicBlock", "CifarResNet", "ShortcutA", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56"]

DEPTHS = (20, 32, 44, 56, 110)


class ShortcutA(nn.Module):
    """Option-A identity shortcut: subsample by ``stride`` and zero-pad channels to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a ReLU between them, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = (
            ShortcutA(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            layers = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The CIFAR ResNet of the given depth (``6n + 2``: 20, 32, 44, 56, 110, ...).

    Raises:
        ParameterError: if ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ParameterError(f"depth: expected an integer of the form 6n + 2 (20, 32, 44, 56, 110), got {depth!r}")
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_channels=in_channels)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (19 conv layers)."""
    return cifar_resnet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR (31 conv layers), the network of the paper's Section 4.2."""
    return cifar_resnet(32, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 for CIFAR (43 conv layers)."""
    return cifar_resnet(44, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (55 conv layers)."""
    return cifar_resnet(56, num_classes)
