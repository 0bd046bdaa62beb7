"""The learning-rate schedule: linear warm-up, then steps at given epochs (mmdet's and torchvision's 1x/2x)."""

from __future__ import annotations

import bisect

import torch


def lr_factor(it: int, iters_per_epoch: int, warmup_iters: int, warmup_factor: float, lr_steps, gamma: float) -> float:
    """LR multiplier at 0-based iteration ``it``: warm-up ramp times ``gamma ** (steps passed)``."""
    warm = 1.0
    if it < warmup_iters:
        alpha = it / warmup_iters
        warm = warmup_factor * (1 - alpha) + alpha
    epoch_float = it / max(1, iters_per_epoch)
    return warm * gamma ** bisect.bisect_right(sorted(lr_steps), epoch_float)


def build_scheduler(optimizer, cfg, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, iters_per_epoch, cfg.warmup_iters, cfg.warmup_factor, cfg.lr_steps, cfg.lr_gamma),
    )


def build_optimizer(params, cfg) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every trainable parameter (as mmdet's and torchvision's recipes)."""
    return torch.optim.SGD([p for p in params if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)
