"""Training and distillation parts of a recipe."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from frs_cli.archs import FAMILIES
from frs_cli.errors import ConfigError, check_range


def schedule_table(role: str) -> str:
    """The recipe table ``frs train --role ROLE`` takes its schedule from: ``teacher_train`` for the teacher,
    ``train`` for the student (and for distillation)."""
    return "teacher_train" if role == "teacher" else "train"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12  # passes over the training images
    batch_size: int = 2  # images per process (per GPU under torchrun)
    lr: float = 0.01  # base learning rate of SGD
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay
    # the bias of every layer but a normalisation layer: LR and weight decay multiplied by these (mmdetection's
    # paramwise_cfg bias_lr_mult / bias_decay_mult; its FCOS configs, the paper's FCOS student: 2 and 0)
    bias_lr_mult: float = 1.0
    bias_decay_mult: float = 1.0
    warmup_iters: int = 500  # LR warm-up length, iterations
    # "linear": the LR rises from warmup_factor x lr to lr over the warm-up; "constant": it stays at warmup_factor x lr
    # until the warm-up ends (mmdetection's FCOS configs: constant at 1/3)
    warmup: Literal["linear", "constant"] = "linear"
    warmup_factor: float = 0.001  # LR multiplier at the first warm-up iteration (all of the warm-up if constant)
    # epochs after which the LR is multiplied by lr_gamma, as mmdetection's steps: (8, 11) of 12 epochs trains
    # epochs 1-8 at lr, 9-11 at lr * lr_gamma and 12 at lr * lr_gamma ** 2 (the step counts from its epoch's start)
    lr_steps: tuple[int, ...] = (8, 11)
    lr_gamma: float = 0.1  # LR decay factor at each step, in (0, 1] (1: no decay)
    grad_clip: float = 0.0  # max global grad norm; 0 turns clipping off
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # autocast dtype on CUDA
    hflip_prob: float = 0.5  # chance of a horizontal flip per image and epoch (GT training and online FRS)
    # multi-scale training: short sides (px) to resize to, one chosen uniformly per image and epoch (mmdetection's
    # RandomChoiceResize, the long side still at most geometry.max_size); empty: geometry.min_size alone. Evaluation
    # always uses geometry.min_size. A cache for distillation holds each flip at each short side (cache.views). In
    # teacher_train, the teacher's own training scales (frs train --role teacher)
    min_sizes: tuple[int, ...] = ()
    group_by_canvas: bool = True  # batches of one canvas (padded size) where the epoch allows; false: plain batches
    workers: int = 2  # DataLoader worker processes per process
    # batches each worker keeps in shared memory after handing them over, so that the training process only unmaps
    # a batch it drops and the worker frees its pages (0: none; see frs_cli/data/packed.py)
    worker_hold: int = 6
    # on one CUDA device, bf16 or float32: a step on a batch of one canvas (forward, losses, backward) replayed as one
    # CUDA graph per batch shape, for students whose GT loss takes padded targets (RetinaNet); the same numbers
    cuda_graphs: bool = True
    # the student's (and the adapters') 4-D weights in channels-last memory, so that cuDNN's convolutions and the batch
    # norms run on NHWC tensors without converting them at every layer (the same model; the numbers within rounding;
    # off until more seeds show a training from scratch loses no AP: docs/RESULTS.md 2f)
    channels_last: bool = False
    seed: int = 0  # seeds model init, data order and flips
    eval_every: int = 0  # evaluate on the val split every N epochs (0: only after the last)
    log_every: int = 20  # write a metrics line every N iterations
    checkpoint_every: int = 0  # also save the training state every N iterations inside an epoch (0: epoch ends only)
    tensorboard: bool = False  # also write scalars and mask images to RUN_DIR/tensorboard (pip install 'frs[tensorboard]')

    def check(self, table: str) -> None:
        """ConfigError naming ``table.<key>`` for the first value no run could use."""
        for name in ("epochs", "batch_size", "log_every"):
            check_range(table, name, getattr(self, name), 1)
        for name in ("workers", "worker_hold", "warmup_iters", "eval_every", "checkpoint_every", "weight_decay",
                     "grad_clip", "bias_lr_mult", "bias_decay_mult"):
            check_range(table, name, getattr(self, name), 0)
        check_range(table, "seed", self.seed, 0, 2**32 - 1)  # numpy's seed range
        check_range(table, "lr", self.lr, 0, low_open=True)
        check_range(table, "momentum", self.momentum, 0, 1, high_open=True)
        check_range(table, "warmup_factor", self.warmup_factor, 0, 1, low_open=True)
        check_range(table, "lr_gamma", self.lr_gamma, 0, 1, low_open=True)  # > 1 would raise the LR at each step
        check_range(table, "hflip_prob", self.hflip_prob, 0, 1)
        for i, step in enumerate(self.lr_steps):
            check_range(table, f"lr_steps[{i}]", step, 0)
        for i, size in enumerate(self.min_sizes):
            check_range(table, f"min_sizes[{i}]", size, 1)
        if len(set(self.min_sizes)) != len(self.min_sizes):
            raise ConfigError(f"recipe key '{table}.min_sizes': expected short sides without repeats, got "
                              f"{list(self.min_sizes)}")


@dataclass(frozen=True)
class DistillConfig:
    # weights of the FPN feature loss and of the head loss; left out, the student family's official values (FRS.md:
    # RetinaNet 0.005 and 0.02, FCOS 0.01 and 0.05, GFL 0.1 and 0.05, Faster R-CNN 0.002 and 0.1; ``for_family``)
    alpha: float | None = None
    beta: float | None = None
    warmup_iters: int = 500  # the distillation losses ramp up linearly over this many iterations
    mask: Literal["frs", "gt"] = "frs"  # "gt": S = 1 inside GT boxes, 0 outside, no head loss (a baseline)
    # distill --cache on CUDA: the cached side, the adapters and both FRS terms of a batch of one canvas replayed as
    # a forward and a backward CUDA graph per batch shape (the same numbers; memory per shape, at most 8 GB in all)
    cuda_graphs: bool = True
    # on CUDA, in a step replayed as one CUDA graph (train.cuda_graphs): the teacher's side (the cached head, or the
    # live teacher) on a second stream beside the student's forward pass, which it does not read (the same numbers)
    teacher_beside: bool = True

    def check(self, table: str) -> None:
        """ConfigError naming ``table.<key>`` for a negative or non-finite weight or warm-up."""
        for name in ("alpha", "beta", "warmup_iters"):
            if getattr(self, name) is not None:
                check_range(table, name, getattr(self, name), 0)

    def for_family(self, family: str) -> DistillConfig:
        """This config with ``alpha`` and ``beta`` that are left out set to ``family``'s official values."""
        spec = FAMILIES[family]
        return replace(self, alpha=spec.alpha if self.alpha is None else self.alpha,
                       beta=spec.beta if self.beta is None else self.beta)
