"""Fold a frozen teacher's batch norms into the convolutions before them.

In inference a batch norm is a fixed affine map per channel, so the convolution it follows can absorb it
(weights scaled per output channel, a bias added) and the forward loses the norm's kernels. Folding is done
only where the conv -> norm data flow is certain (``fold_batchnorm``). Under bf16 the folded weights round
differently than conv-then-norm does, so every path that runs the same teacher (the cache writer's, the live
distillation's) must fold alike, or their outputs differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d

# child pairs (conv, norm) that a block's own forward runs one into the other
_BLOCK_PAIRS: tuple[tuple[type[nn.Module], tuple[tuple[str, str], ...]], ...] = (
    (BasicBlock, (("conv1", "bn1"), ("conv2", "bn2"))),
    (Bottleneck, (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))),
    (ResNet, (("conv1", "bn1"),)),
)
# containers whose forward runs their children in order, each on the previous one's output
_CHAINS = (nn.Sequential, IntermediateLayerGetter)


def _plain(m: nn.Module, cls: type[nn.Module], *methods: str) -> bool:
    """``m`` is a ``cls`` whose forward (and ``methods``) are ``cls``'s own: a subclass that overrides them may
    not run what ``cls`` runs."""
    return isinstance(m, cls) and all(getattr(type(m), name) is getattr(cls, name) for name in ("forward", *methods))


def _foldable_norm(m: nn.Module) -> bool:
    """A per-channel affine map as it stands: FrozenBatchNorm2d, or a BatchNorm2d in eval mode with running
    statistics (in training mode, or without them, it normalises by the batch's own statistics)."""
    if _plain(m, FrozenBatchNorm2d):
        return True
    return (_plain(m, nn.BatchNorm2d) and not m.training and m.track_running_stats
            and m.running_mean is not None and m.running_var is not None)


def _pairs(module: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """``(parent, conv name, norm name)`` for each foldable norm whose input is certainly its conv's output."""
    for parent in module.modules():
        names: list[tuple[str, str]] = []
        if any(_plain(parent, cls) for cls in _CHAINS):
            names = list(pairwise(parent._modules))  # every child in order (named_children skips repeats)
        for cls, pairs in _BLOCK_PAIRS:
            if _plain(parent, cls, *(("_forward_impl",) if cls is ResNet else ())):
                names = list(pairs)
        for conv_name, norm_name in names:
            conv, norm = getattr(parent, conv_name, None), getattr(parent, norm_name, None)
            if (_plain(conv, nn.Conv2d, "_conv_forward") and _foldable_norm(norm)
                    and norm.running_mean.numel() == conv.out_channels):
                yield parent, conv_name, norm_name


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Make ``conv`` compute norm(conv(x)): W' = W s, b' = (b - mean) s + beta, s = gamma / sqrt(var + eps)."""
    f64 = torch.float64
    mean, var = norm.running_mean.to(f64), norm.running_var.to(f64)
    gamma = norm.weight.to(f64) if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.to(f64) if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    w = conv.weight
    bias = conv.bias.to(f64) if conv.bias is not None else torch.zeros_like(mean)
    folded_w = w.to(f64) * scale.to(w.device).reshape(-1, *([1] * (w.dim() - 1)))
    folded_b = (bias.to(mean.device) - mean) * scale + beta
    w.copy_(folded_w.to(w.dtype))  # in place: the same Parameter, its requires_grad kept
    if conv.bias is None:
        conv.bias = nn.Parameter(folded_b.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(folded_b.to(device=conv.bias.device, dtype=conv.bias.dtype))


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, each inference batch norm that directly follows a convolution into it; how many.

    Folded: a ``FrozenBatchNorm2d``, or a ``BatchNorm2d`` in eval mode with running statistics (its ``eps``
    and ``affine`` respected), that is child i + 1 of an ``nn.Sequential`` (or of torchvision's
    ``IntermediateLayerGetter``, the body of its detection backbones) whose child i is an ``nn.Conv2d``, or
    ``bn1``/``bn2``/``bn3`` after ``conv1``/``conv2``/``conv3`` of torchvision's ``BasicBlock`` and
    ``Bottleneck``, or ``bn1`` after ``conv1`` of its ``ResNet``. A subclass of these that overrides its
    forward is skipped (its data flow is unknown), and so is every other norm (GroupNorm, training mode).
    The conv's weight is scaled per output channel and it gets a bias if it had none (computed in float64,
    stored in the weight's dtype, with the weight's ``requires_grad``); the norm becomes ``nn.Identity``.
    A second call folds nothing.
    """
    found, seen = [], set()  # all found before any is replaced; a module met twice is folded once
    for parent, conv_name, norm_name in _pairs(module):
        ids = {id(getattr(parent, conv_name)), id(getattr(parent, norm_name))}
        if not ids & seen:
            found.append((parent, conv_name, norm_name))
            seen |= ids
    for parent, conv_name, norm_name in found:
        _fold(getattr(parent, conv_name), getattr(parent, norm_name))
        setattr(parent, norm_name, nn.Identity())
    return len(found)
