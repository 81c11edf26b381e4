"""A fast network for small images, after airbench94's design (Keller Jordan, 2024).

A frozen 2x2 "whitening" convolution initialised from the training data's patch statistics, then three groups of
(conv, max-pool, batch-norm, GELU, conv, batch-norm, GELU), a global max-pool and a bias-free linear layer whose
output is scaled down. Batch-norm weights are fixed at one and only their biases train. Layer widths are arguments,
so a pruned network rebuilds from its manifest.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_model

DEFAULT_WIDTHS = (64, 256, 256)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _conv(c_in: int, c_out: int, kernel: int = 3, padding="same", bias: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias)
    # Identity (Dirac) initialisation of the first c_in filters keeps the signal through deep stacks early on.
    nn.init.dirac_(conv.weight.data[: min(c_in, c_out)])
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=1 - momentum)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool, bn_momentum: float):
        super().__init__()
        self.conv1 = _conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = _norm(c_out, bn_momentum)
        self.act1 = nn.GELU()
        self.conv2 = _conv(c_out, c_out)
        self.norm2 = _norm(c_out, bn_momentum)
        self.act2 = nn.GELU()

    def forward(self, x):
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, widths=DEFAULT_WIDTHS,
                 whiten_kernel: int = 2, bn_momentum: float = 0.6, scale: float = 1 / 9):
        super().__init__()
        self.whiten = _conv(in_channels, 2 * in_channels * whiten_kernel**2, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        size, groups, c_in = image_size - whiten_kernel + 1, [], self.whiten.out_channels
        for width in widths:
            pool = size >= 2  # tiny inputs (8x8 digits) stop pooling before the map vanishes
            size = size // 2 if pool else size
            groups.append(ConvGroup(c_in, width, pool, bn_momentum))
            c_in = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.scale = Scale(scale)

    def forward(self, x):
        x = self.groups(self.act(self.whiten(x)))
        return self.scale(self.head(torch.flatten(self.pool(x), 1)))


# ------------------------------------------------------------------------------------------ hooks
def init_whitening(net: FastNet, sample: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the frozen first conv to the (+/-) whitening transform of the sample's k x k patches.

    sample: normalised training images (a seeded, class-stratified draw: data sorted by class would otherwise
    whiten for one class only)."""
    conv = net.whiten
    c, (kh, kw) = conv.in_channels, conv.kernel_size
    patches = sample.float().unfold(2, kh, 1).unfold(3, kw, 1).transpose(1, 3).reshape(-1, c * kh * kw)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    # Strongest directions first, each scaled to unit variance; the negated copies let GELU pass both signs.
    filters = (eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + eps)[:, None]).reshape(-1, c, kh, kw)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))


def _pruning_ignored(net: FastNet) -> list[nn.Module]:
    # The classifier's outputs are the classes; the whitening layer is set from data and frozen.
    return [net.head, net.whiten]


def _width_args(pruned: FastNet) -> dict:
    # One channel fraction for every layer keeps a group's two convolutions equally wide, as `widths` describes.
    if any(group.conv1.out_channels != group.conv2.out_channels for group in pruned.groups):
        raise RuntimeError("pruning left a fastnet group with two widths")
    return {"widths": [group.conv2.out_channels for group in pruned.groups]}


def _narrower(args: dict, fraction: float) -> dict:
    widths = args.get("widths", DEFAULT_WIDTHS)
    return {**args, "widths": [max(8, int(round(w * fraction / 8)) * 8) for w in widths]}


def _build(num_classes: int, in_channels: int, image_size: int, **kwargs) -> FastNet:
    return FastNet(num_classes, in_channels, image_size, **kwargs)


register_model("fastnet", _build, description="airbench94-style net (about 2M parameters at widths 64/256/256)",
               data_init=init_whitening, pruning_ignored=_pruning_ignored, width_args=_width_args,
               narrower=_narrower, early_params=lambda net: [net.whiten.bias], head=lambda net: net.head)
