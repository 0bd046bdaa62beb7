"""What a training step minimises: the detector's GT loss alone, or GT loss plus FRS distillation.

An objective (the ``Objective`` protocol) is an ``nn.Module`` holding everything that trains (the student, the
FRS adapters) and whatever supplies the teacher's side (a ``TeacherSide``: a classification head rebuilt from a
cache, or the live teacher). Its forward maps a batch and the iteration number to a dict of named,
already-weighted loss terms; the loop sums them. ``checkpointed()`` names what trains and is saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.data.coco import Batch
from frs_cli.data.geometry import level_valid_size
from frs_cli.errors import FrsError
from frs_cli.losses import FeatureAdapter, distill_weight, feature_loss, frs_masks, gt_box_masks, head_loss
from frs_cli.models.base import Detector, FrsSignature, check_compatible
from frs_cli.train.canvas import crop_stack, level_grids, on_own_canvas
from frs_cli.train.config import DistillConfig

__all__ = ["CachedTeacher", "FRSObjective", "GTObjective", "Objective", "OnlineTeacher", "TeacherSide",
           "check_compatible", "valid_masks"]


def valid_masks(image_sizes: list[tuple[int, int]], features: list[Tensor], strides: list[int]) -> list[Tensor]:
    """Per level ``(B, H, W)`` bool: True over each image's real pixels, False over batch padding."""
    out = []
    for f, s in zip(features, strides):
        b, _, h, w = f.shape
        m = torch.zeros((b, h, w), dtype=torch.bool, device=f.device)
        for i, size in enumerate(image_sizes):
            vh, vw = level_valid_size(size, s, (h, w))
            m[i, :vh, :vw] = True
        out.append(m)
    return out


class Objective(Protocol):
    """What the trainer trains: an ``nn.Module`` (``to``, ``train``, ``parameters`` are nn.Module's) that

    - maps ``(batch, step)`` to named, already-weighted loss terms (scalar tensors; the trainer sums them),
    - names in ``checkpointed()`` the modules that train and are saved in (and restored from) the training
      state, by the names the state stores them under; never the teacher's side,
    - holds the ``student``, the detector a run produces (its model file, its evaluation).
    """

    student: Detector

    def __call__(self, batch: Batch, step: int) -> dict[str, Tensor]: ...

    def checkpointed(self) -> dict[str, nn.Module]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def to(self, device: torch.device) -> Objective: ...

    def train(self, mode: bool = True) -> Objective: ...


class GTObjective(nn.Module):
    """Plain detector training: the detector's own losses."""

    def __init__(self, student: Detector):
        super().__init__()
        self.student = student

    def checkpointed(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def forward(self, batch: Batch, step: int) -> dict[str, Tensor]:
        return dict(self.student(batch.images, batch.image_sizes, batch.targets).losses)


class TeacherTargets:
    """The teacher's side of one batch: per level features, classification logits and FRS masks."""

    def __init__(self, features: list[Tensor], cls_logits: list[Tensor] | None, masks: list[Tensor]):
        self.features, self.cls_logits, self.masks = features, cls_logits, masks


class TeacherSide(Protocol):
    """Where a distillation objective gets the teacher's side of a batch (``CachedTeacher``, ``OnlineTeacher``):
    an ``nn.Module`` that never trains and is never checkpointed. ``need_logits``: the head loss needs the
    teacher's classification logits (else ``cls_logits`` may be None)."""

    def __call__(self, batch: Batch, need_logits: bool) -> TeacherTargets: ...


def teacher_autocast(device: torch.device, enabled: bool):
    """The teacher's precision, the same in ``teacher-cache`` and in distillation: bf16 autocast on CUDA when
    ``enabled`` (``cache.amp``), else float32, whatever the student trains in."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


class CachedTeacher(nn.Module):
    """Teacher targets from a cache: the batch's ``CachedTargets`` features decoded on its device by the cache's
    ``encoding``, masks as stored, logits recomputed by the cached head on each view's own canvas
    (``train.canvas``), in the precision the cache was written with (``autocast``)."""

    def __init__(self, cls_head: nn.Module, strides: list[int], encoding: FeatureEncoding, autocast: bool = True):
        super().__init__()
        self.cls_head = cls_head.eval().requires_grad_(False)
        self.encoding = encoding
        self.strides = list(strides)
        self.autocast = autocast

    @classmethod
    def from_cache(cls, cache) -> CachedTeacher:
        """The teacher side of a ``TeacherCache``: its head, strides, feature encoding and teacher precision."""
        return cls(cache.build_head(), [lv.stride for lv in cache.levels], cache.encoding, cache.teacher_autocast)

    def train(self, mode: bool = True):  # the teacher head stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: Batch, need_logits: bool) -> TeacherTargets:
        if batch.teacher is None:
            raise FrsError("distill: this batch carries no cached teacher targets (was the loader built from a cache?)")
        cached = batch.teacher
        self.encoding.check_scales(cached.scales is not None, "distill: the batch's cached targets",
                                   hint="build the teacher side from the batches' cache: CachedTeacher.from_cache")
        feats = [self.encoding.decode(f, None if cached.scales is None else cached.scales[lv])
                 for lv, f in enumerate(cached.features)]
        logits = None
        if need_logits:
            dtype = next(self.cls_head.parameters()).dtype
            strides = self.strides

            def head(indices: list[int], size: tuple[int, int]) -> list[list[Tensor]]:
                own = [crop_stack(f, indices, g) for f, g in zip(feats, level_grids(size, strides))]
                with teacher_autocast(own[0].device, self.autocast):
                    return [self.cls_head([f.to(dtype) for f in own])]

            logits, = on_own_canvas(head, batch.geometries, [tuple(f.shape[-2:]) for f in feats])
        return TeacherTargets(feats, logits, cached.masks)


class OnlineTeacher(nn.Module):
    """The original method: run the frozen teacher every step, on each view's own canvas (``train.canvas``) and
    in the precision ``teacher-cache`` uses (``autocast``), so that it computes what a cache holds."""

    def __init__(self, teacher: Detector, autocast: bool = True):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.autocast = autocast

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: Batch, need_logits: bool) -> TeacherTargets:
        strides = self.teacher.strides

        def run(indices: list[int], size: tuple[int, int]) -> list[list[Tensor]]:
            images = crop_stack(batch.images, indices, size)
            with teacher_autocast(images.device, self.autocast):
                out = self.teacher(images, [batch.image_sizes[i] for i in indices], detect=False)
            return [out.features, out.cls_logits, frs_masks(out.cls_logits)]

        grids = level_grids(tuple(batch.images.shape[-2:]), strides)
        features, cls_logits, masks = on_own_canvas(run, batch.geometries, grids)
        return TeacherTargets(features, cls_logits, masks)


class FRSObjective(nn.Module):
    """``L = L_GT + w(t) * (alpha * L_FPN + beta * L_head)`` with the teacher's side from ``teacher_side``.

    ``teacher`` is the teacher's ``FrsSignature`` (``Detector.signature`` or ``TeacherCache.signature``).
    """

    def __init__(self, student: Detector, teacher: FrsSignature, teacher_side: TeacherSide, cfg: DistillConfig):
        super().__init__()
        check_compatible(student.signature, teacher)
        self.student = student
        self.adapters = FeatureAdapter([lv.channels for lv in student.levels], [lv.channels for lv in teacher.levels])
        self.teacher_side = teacher_side
        self.cfg = cfg

    def checkpointed(self) -> dict[str, nn.Module]:
        return {"student": self.student, "adapters": self.adapters}

    def forward(self, batch: Batch, step: int) -> dict[str, Tensor]:
        out = self.student(batch.images, batch.image_sizes, batch.targets)
        losses = dict(out.losses)
        teacher = self.teacher_side(batch, need_logits=self.cfg.mask == "frs")
        for lv, (fs, ft) in enumerate(zip(out.features, teacher.features)):
            if fs.shape[-2:] != ft.shape[-2:]:
                raise FrsError(f"distill: level {self.student.level_names[lv]} student grid {tuple(fs.shape[-2:])} "
                               f"!= teacher grid {tuple(ft.shape[-2:])}")
        strides = self.student.strides
        valid = valid_masks(batch.image_sizes, out.features, strides)
        w = distill_weight(step, self.cfg.warmup_iters)
        if self.cfg.mask == "gt":
            masks = gt_box_masks([t["boxes"] for t in batch.targets], [f.shape[-2:] for f in out.features], strides)
        else:
            masks = teacher.masks
        losses["frs_feature"] = w * self.cfg.alpha * feature_loss(self.adapters(out.features), teacher.features,
                                                                  masks, valid)
        if self.cfg.mask == "frs":
            losses["frs_head"] = w * self.cfg.beta * head_loss(out.cls_logits, teacher.cls_logits, masks, valid)
        return losses
