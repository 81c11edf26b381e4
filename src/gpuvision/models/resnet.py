"""The ResNet family from timm, with the stem adapted to small inputs (3x3 stride-1 first conv, no max-pool).

timm's blocks use a separate activation module per use, which PT2E quantisation needs (torchvision's BasicBlock
reuses one ReLU and fails there).

`layer_shapes` ({module name: weight shape}) rebuilds a network whose channels were pruned or narrowed: every
listed convolution, batch-norm and linear layer is replaced by one of the recorded size.
"""

from __future__ import annotations

from torch import nn

from . import register_model

SMALL_INPUT = 64  # at or below this size the ImageNet stem would shrink the map too early


def _resnet(arch: str, num_classes: int, in_channels: int, image_size: int, small_stem: bool | None = None,
            layer_shapes: dict[str, list[int]] | None = None, **kwargs) -> nn.Module:
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    if small_stem is None:
        small_stem = image_size <= SMALL_INPUT
    if small_stem:
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    if layer_shapes:
        resize_layers(model, layer_shapes)
    return model


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """The weight shape of every convolution, batch-norm and linear layer, by module name."""
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    return {name: list(m.weight.shape) for name, m in model.named_modules() if isinstance(m, kinds)}


def _resized(module: nn.Module, shape: list[int]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape[1] * module.groups, shape[0], module.kernel_size, module.stride, module.padding,
                         module.dilation, module.groups, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], module.bias is not None)
    raise ValueError(f"cannot resize a {type(module).__name__}")


def resize_layers(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Replace the named layers by fresh ones of the given weight shapes (the weights are loaded afterwards)."""
    for name, shape in shapes.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        if list(module.weight.shape) != list(shape):
            setattr(parent, child, _resized(module, shape))
    if hasattr(model, "num_features") and hasattr(model, "fc"):
        model.num_features = model.fc.in_features  # timm reads it when the head is reset


def _narrower(arch: str, args: dict, fraction: float) -> dict:
    """Every hidden layer `fraction` as wide (rounded to 8); the image's channels and the classes stay."""
    template = _resnet(arch, **args)
    shapes = {}
    for layer, shape in layer_shapes(template).items():
        shape = list(shape)
        shape[0] = shape[0] if layer == "fc" else _round8(shape[0] * fraction)
        if len(shape) > 1 and not (layer == "conv1" and len(shape) == 4):  # conv1 reads the image
            shape[1] = _round8(shape[1] * fraction)
        shapes[layer] = shape
    return {**args, "layer_shapes": shapes}


def _round8(n: float) -> int:
    return max(8, int(round(n / 8)) * 8)


for _name in ("resnet18", "resnet34", "resnet50"):
    register_model(_name, lambda _arch=_name, **kw: _resnet(_arch, **kw), description=f"timm {_name}",
                   pruning_ignored=lambda net: [net.get_classifier()], head=lambda net: net.get_classifier(),
                   width_args=lambda net: {"layer_shapes": layer_shapes(net)},
                   narrower=lambda args, fraction, _arch=_name: _narrower(_arch, args, fraction))
