"""The learning-rate schedule and the optimizer: warm-up (linear, or mmdetection's constant), then steps at given
epochs (mmdet's and torchvision's 1x/2x); SGD with mmdetection's bias multipliers where a recipe sets them."""

from __future__ import annotations

import bisect

import torch
from torch import nn

# layers whose bias mmdetection's multipliers leave alone (its DefaultOptimizerConstructor's norm layers)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
         nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def lr_factor(it: int, iters_per_epoch: int, warmup_iters: int, warmup_factor: float, lr_steps, gamma: float,
              warmup: str = "linear") -> float:
    """LR multiplier at 0-based iteration ``it``: warm-up (a linear ramp from ``warmup_factor``, or ``warmup_factor``
    throughout when ``warmup`` is "constant") times ``gamma ** (steps passed)``."""
    warm = 1.0
    if it < warmup_iters:
        alpha = 0.0 if warmup == "constant" else it / warmup_iters
        warm = warmup_factor * (1 - alpha) + alpha
    epoch_float = it / max(1, iters_per_epoch)
    return warm * gamma ** bisect.bisect_right(sorted(lr_steps), epoch_float)


def build_scheduler(optimizer, cfg, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, iters_per_epoch, cfg.warmup_iters, cfg.warmup_factor, cfg.lr_steps, cfg.lr_gamma,
                             cfg.warmup),
    )


def build_optimizer(model: nn.Module, cfg) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter of ``model`` that trains (as mmdet's and torchvision's
    recipes), in ``model.parameters()``' order. With ``cfg.bias_lr_mult`` or ``cfg.bias_decay_mult`` other than 1, the
    bias of each layer but a normalisation layer (``NORMS``) is a second group at those multiples of the LR and
    weight decay (mmdetection's ``paramwise_cfg``; the normalisation layers' weights and biases keep both)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if cfg.bias_lr_mult != 1.0 or cfg.bias_decay_mult != 1.0:
        biases = {id(m.bias) for m in model.modules()
                  if not isinstance(m, NORMS) and isinstance(getattr(m, "bias", None), nn.Parameter)}
        groups = [{"params": [p for p in groups[0]["params"] if id(p) not in biases]},
                  {"params": [p for p in groups[0]["params"] if id(p) in biases], "lr": cfg.lr * cfg.bias_lr_mult,
                   "weight_decay": cfg.weight_decay * cfg.bias_decay_mult}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
