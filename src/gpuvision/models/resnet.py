"""The ResNet family from timm, with the stem adapted to small inputs (3x3 stride-1 first conv, no max-pool).

timm's blocks use a separate activation module per use, which PT2E quantisation needs (torchvision's BasicBlock
reuses one ReLU and fails there).
"""

from __future__ import annotations

from torch import nn

from . import MODELS

SMALL_INPUT = 64  # at or below this size the ImageNet stem would shrink the map too early


def _resnet(arch: str, num_classes: int, in_channels: int, image_size: int, small_stem: bool | None = None,
            **kwargs) -> nn.Module:
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    if small_stem is None:
        small_stem = image_size <= SMALL_INPUT
    if small_stem:
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


for _name in ("resnet18", "resnet34", "resnet50"):
    MODELS.register(_name)(lambda _arch=_name, **kw: _resnet(_arch, **kw))
