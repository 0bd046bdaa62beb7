"""What a training step minimises: the detector's GT loss alone, or GT loss plus FRS distillation.

An objective (the ``Objective`` protocol) is an ``nn.Module`` holding everything that trains (the student, the
FRS adapters) and whatever supplies the teacher's side (a ``TeacherSide``: a classification head rebuilt from a
cache, or the live teacher). Its forward maps a batch and the iteration number to a dict of named,
already-weighted loss terms; the loop sums them. ``checkpointed()`` names what trains and is saved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

from frs_cli.archs import FrsSignature, check_compatible
from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.data.coco import Batch
from frs_cli.data.geometry import level_valid_size
from frs_cli.errors import FrsError
from frs_cli.losses import FeatureAdapter, distill_weight, frs_losses, frs_masks, gt_box_masks, positions_within
from frs_cli.models.base import Detector
from frs_cli.models.fold import fold_batchnorm
from frs_cli.models.retinanet_loss import PaddedTargets, pad_targets
from frs_cli.streams import SideStream
from frs_cli.train.canvas import canvas_groups, crop_stack, level_grids, on_own_canvas
from frs_cli.train.config import DistillConfig
from frs_cli.train.graphed import GraphedTerms, cached_targets, frs_terms

log = logging.getLogger(__name__)

__all__ = ["CachedTeacher", "FRSObjective", "GTObjective", "Objective", "OnlineTeacher", "TeacherSide",
           "check_compatible", "image_sizes_on", "valid_masks", "valid_positions"]


def _pinned_to(x: Tensor, device: torch.device) -> Tensor:
    """Host tensor ``x`` on ``device``: on CUDA copied from pinned memory, a copy that does not wait for the device."""
    return (x.pin_memory() if device.type == "cuda" else x).to(device, non_blocking=True)


def valid_masks(image_sizes: list[tuple[int, int]], features: list[Tensor], strides: list[int]) -> list[Tensor]:
    """Per level ``(B, H, W)`` bool: True over each image's real pixels, False over batch padding.

    A few kernels per level whatever the batch size: the per-image sizes go to the device in one pinned copy and
    the masks are comparisons against row and column indices (the step's host thread, not the device, bounds it).
    """
    device = features[0].device
    grids = [tuple(f.shape[-2:]) for f in features]
    sizes = _pinned_to(torch.tensor([[level_valid_size(size, s, g) for size in image_sizes]
                                     for g, s in zip(grids, strides)], dtype=torch.int64), device)  # (L, B, 2)
    out = []
    for lv, (h, w) in enumerate(grids):
        rows = torch.arange(h, device=device) < sizes[lv, :, 0:1]  # (B, H)
        cols = torch.arange(w, device=device) < sizes[lv, :, 1:2]  # (B, W)
        out.append(rows[:, :, None] & cols[:, None, :])
    return out


def image_sizes_on(image_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """``(B, 2)`` long on ``device``: each image's valid (resized) height and width, in one pinned copy on CUDA."""
    return _pinned_to(torch.tensor(image_sizes, dtype=torch.int64).view(-1, 2), device)


def valid_positions(image_sizes: list[tuple[int, int]], grids: list[tuple[int, int]], strides: list[int],
                    device: torch.device) -> Tensor:
    """``valid_masks`` with the levels side by side, ``(B, P)`` bool, as the FRS losses take it: the same
    positions, from one pinned copy of the image sizes and two comparisons whatever the batch and the number of
    levels (``losses.positions_within``)."""
    return positions_within(image_sizes_on(image_sizes, device), grids, strides)


MIN_BOX_ROWS = 8  # the fewest rows a batch's boxes are padded to on the whole-step graph path


def box_rows(count: int) -> int:
    """The row count a batch's boxes are padded to: the next power of two from its largest count, at least
    ``MIN_BOX_ROWS``, so that a few shapes serve every batch of a canvas."""
    return max(MIN_BOX_ROWS, 1 << max(0, count - 1).bit_length())


def one_canvas(batch: Batch) -> bool:
    """Whether every view of ``batch`` lies on one canvas that is the batch's own size (no view padded further)."""
    groups = canvas_groups(batch.geometries)
    return len(groups) == 1 and tuple(groups[0][0]) == tuple(batch.images.shape[-2:])


def step_inputs(student: Detector, batch: Batch) -> list[Tensor] | None:
    """``[images, sizes, boxes, labels, valid]`` of a one-canvas ``batch`` on its device (sizes ``(B, 2)`` long, the
    targets padded to ``box_rows``), or None where the student's GT loss needs the per-image lists or the batch
    holds several canvases."""
    if not student.takes_padded_targets or not one_canvas(batch):
        return None
    device = batch.images.device
    rows = box_rows(max(len(t["boxes"]) for t in batch.targets))
    return [batch.images, image_sizes_on(batch.image_sizes, device), *pad_targets(batch.targets, device, rows)]


def student_pass(student: Detector, images: Tensor, sizes: Tensor, boxes: Tensor, labels: Tensor, valid: Tensor):
    """The student's training pass (``DetectorOutput``) on ``step_inputs``' tensors: normalised through
    ``normalize_within``, its GT loss on the padded targets."""
    b, _, h, w = images.shape
    return student(student.normalize_within(images, sizes), [(h, w)] * b, PaddedTargets(boxes, labels, valid))


class Objective(Protocol):
    """What the trainer trains: an ``nn.Module`` (``to``, ``train``, ``parameters`` are nn.Module's) that

    - maps ``(batch, step)`` to named, already-weighted loss terms (scalar tensors; the trainer sums them),
    - names in ``checkpointed()`` the modules that train and are saved in (and restored from) the training
      state, by the names the state stores them under; never the teacher's side,
    - holds the ``student``, the detector a run produces (its model file, its evaluation),
    - may offer its step on a batch's tensors alone, for ``train.cuda_graphs`` (``frs_cli.train.step_graphs``):
      ``graph_inputs(batch)``, ``graph_terms(*inputs)`` and ``term_weights(step)``.
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

    def graph_inputs(self, batch: Batch) -> list[Tensor] | None:
        """The batch's ``step_inputs``, or None when its step runs only eagerly."""
        return step_inputs(self.student, batch)

    def graph_terms(self, *inputs: Tensor) -> dict[str, Tensor]:
        """``forward``'s terms from ``graph_inputs``' tensors alone."""
        return dict(student_pass(self.student, *inputs).losses)

    def term_weights(self, step: int) -> dict[str, float]:
        """The GT terms carry no weight."""
        return {}


class TeacherTargets:
    """The teacher's side of one batch: per level features, classification logits and FRS masks."""

    def __init__(self, features: list[Tensor], cls_logits: list[Tensor] | None, masks: list[Tensor]):
        self.features, self.cls_logits, self.masks = features, cls_logits, masks


class TeacherSide(Protocol):
    """Where a distillation objective gets the teacher's side of a batch (``CachedTeacher``, ``OnlineTeacher``):
    an ``nn.Module`` that never trains and is never checkpointed. ``need_logits``: the head loss needs the
    teacher's classification logits (else ``cls_logits`` may be None). A side whose batches may be replayed as one
    graph (``train.cuda_graphs``) has ``graph_inputs(batch)`` (its tensors of a batch, or None), ``graph_targets``
    (the teacher's tensors from them, reading nothing of the student) and ``graph_frs`` (both terms from those)."""

    def __call__(self, batch: Batch, need_logits: bool) -> TeacherTargets: ...


def teacher_autocast(device: torch.device, enabled: bool):
    """The teacher's precision, the same in ``teacher-cache`` and in distillation: bf16 autocast on CUDA when
    ``enabled`` (``cache.amp``), else float32, whatever the student trains in."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


class CachedTeacher(nn.Module):
    """Teacher targets from a cache: the batch's ``CachedTargets`` features decoded on its device by the cache's
    ``encoding``, masks as stored, logits recomputed by the cached head on each view's own canvas
    (``train.canvas``), in the precision the cache was written with (``autocast``).

    ``cuda_graphs`` (``distill.cuda_graphs``; CUDA only): ``FRSObjective`` replays this side and both FRS terms of a
    batch of one canvas as CUDA graphs (``frs_cli.train.graphed``); ``graphed(batch)`` says which batches qualify.
    ``channels_last``: the head's and the decoded features' memory layout (by default channels-last on CUDA).
    """

    def __init__(self, cls_head: nn.Module, strides: list[int], encoding: FeatureEncoding, autocast: bool = True,
                 cuda_graphs: bool = False, channels_last: bool | None = None):
        super().__init__()
        self.cls_head = cls_head.eval().requires_grad_(False)
        fold_batchnorm(self.cls_head)  # as the pass that wrote the cache ran the teacher's head
        self.nhwc = False  # whether the head's weights are channels-last now
        self.channels_last = channels_last  # lays the head out
        self.encoding = encoding
        self.strides = list(strides)
        self.autocast = autocast
        self.cuda_graphs = cuda_graphs

    @classmethod
    def from_cache(cls, cache, cuda_graphs: bool = False) -> CachedTeacher:
        """The teacher side of a ``TeacherCache``: its head, strides, feature encoding and teacher precision."""
        return cls(cache.build_head(), [lv.stride for lv in cache.levels], cache.encoding, cache.teacher_autocast,
                   cuda_graphs)

    def train(self, mode: bool = True):  # the teacher head stays in eval mode
        return super().train(False)

    @property
    def channels_last(self) -> bool | None:
        """The head's layout: True channels-last, False contiguous, None (the default) channels-last on CUDA."""
        return self._channels_last

    @channels_last.setter
    def channels_last(self, value: bool | None) -> None:
        self._channels_last = value
        self._lay_out()

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._lay_out()  # moved to another device: the layout that device wants
        return self

    def _lay_out(self) -> None:
        """The head's weights channels-last when ``channels_last`` says so, or when it is None and they lie on CUDA
        (where cuDNN runs NHWC and converts NCHW tensors at every layer); contiguous otherwise. The decoded features
        follow (``decode``). The same values; cuDNN may pick other kernels for the one layout than the other."""
        on_cuda = next(self.cls_head.parameters()).is_cuda
        nhwc = self._channels_last if self._channels_last is not None else on_cuda
        if nhwc != self.nhwc:
            self.cls_head.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
            self.nhwc = nhwc

    def decode(self, features: list[Tensor], scales: list[Tensor] | None) -> list[Tensor]:
        """Per level the cached ``features`` (as the batch carries them, with their ``scales`` when the encoding
        has them) as the teacher's float features, on their device."""
        return [self.encoding.decode(f, None if scales is None else scales[lv], self.nhwc)
                for lv, f in enumerate(features)]

    def head_logits(self, feats: list[Tensor]) -> list[Tensor]:
        """The teacher's classification logits per level of decoded ``feats`` of one canvas, in the cache's
        precision."""
        device = feats[0].device
        with teacher_autocast(device, self.autocast):
            if not torch.is_autocast_enabled(device.type):
                dtype = next(self.cls_head.parameters()).dtype
                feats = [f.to(dtype) for f in feats]
            # under autocast the convolutions cast the float16 features to bfloat16 themselves: the same numbers as
            # through float32 (float16 -> float32 is exact), one pass over them fewer
            return self.cls_head(feats)

    def graphed(self, batch: Batch) -> bool:
        """Whether ``batch`` runs as CUDA graphs: ``cuda_graphs`` on, on CUDA, one canvas whose level grids are the
        batch's (no view is padded beyond its own canvas)."""
        cached = batch.teacher
        if not self.cuda_graphs or cached is None or cached.features[0].device.type != "cuda":
            return False
        groups = canvas_groups(batch.geometries)
        return len(groups) == 1 and self._on_canvas(cached, groups[0][0])

    def _on_canvas(self, cached, canvas: tuple[int, int]) -> bool:
        """Whether the ``cached`` targets' level grids are those of ``canvas``."""
        return level_grids(canvas, self.strides) == [tuple(f.shape[-2:]) for f in cached.features]

    def graph_inputs(self, batch: Batch) -> list[Tensor] | None:
        """The batch's cached tensors as ``frs_terms`` takes them (features, scales when the encoding has them,
        masks), or None unless they lie on the batch's one canvas."""
        self.check_batch(batch)
        cached = batch.teacher
        if not self._on_canvas(cached, tuple(batch.images.shape[-2:])):
            return None
        return [*cached.features, *(cached.scales or []), *cached.masks]

    def graph_targets(self, images: Tensor, sizes: Tensor, side: list[Tensor]) -> list[Tensor]:
        """The teacher's features and logits per level (features first) from ``graph_inputs``' tensors (``side``):
        what ``graph_frs`` reads. It does not read the student, so ``FRSObjective.graph_terms`` may run it beside
        the student's pass."""
        n = len(self.strides)
        feats, logits = cached_targets(self, list(side[:n]), list(side[n:2 * n]) if len(side) == 3 * n else None)
        return [*feats, *logits]

    def graph_frs(self, adapters: FeatureAdapter, student_out, sizes: Tensor, side: list[Tensor],
                  targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Both FRS terms from ``graph_inputs``' tensors (``side``: the masks are read there), ``graph_targets``'
        tensors (``targets``), the student's pass and the valid sizes: the operations of ``frs_terms``, which
        ``distill.cuda_graphs`` replays, in the student's precision."""
        device = sizes.device
        amp = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        params = [p for conv in adapters.convs for p in (conv.weight, conv.bias)]
        n = len(self.strides)
        return frs_terms(self, adapters, amp, n, len(side) == 3 * n, *student_out.features, *student_out.cls_logits,
                         *side, sizes, *params, targets=(targets[:n], targets[n:]))

    def check_batch(self, batch: Batch) -> None:
        """FrsError unless ``batch`` carries cached targets with scales exactly when the encoding has them."""
        if batch.teacher is None:
            raise FrsError("distill: this batch carries no cached teacher targets (was the loader built from a cache?)")
        self.encoding.check_scales(batch.teacher.scales is not None, "distill: the batch's cached targets",
                                   hint="build the teacher side from the batches' cache: CachedTeacher.from_cache")

    @torch.no_grad()
    def forward(self, batch: Batch, need_logits: bool) -> TeacherTargets:
        self.check_batch(batch)
        cached = batch.teacher
        feats = self.decode(cached.features, cached.scales)
        logits = None
        if need_logits:
            strides = self.strides

            def head(indices: list[int], size: tuple[int, int]) -> list[list[Tensor]]:
                crops = [crop_stack(f, indices, g) for f, g in zip(feats, level_grids(size, strides))]
                return [self.head_logits(crops)]

            logits, = on_own_canvas(head, batch.geometries, [tuple(f.shape[-2:]) for f in feats])
        return TeacherTargets(feats, logits, cached.masks)


class OnlineTeacher(nn.Module):
    """The original method: run the frozen teacher every step, on each view's own canvas (``train.canvas``), in
    the precision ``teacher-cache`` uses (``autocast``) and with its batch norms folded as the cache writer folds
    them (``frs_cli.models.fold``; the teacher module passed in is folded in place), so that it computes what a
    cache holds."""

    def __init__(self, teacher: Detector, autocast: bool = True):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        fold_batchnorm(self.teacher)  # as teacher-cache's pass does: the same arithmetic in both paths
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

    def graph_inputs(self, batch: Batch) -> list[Tensor]:
        """The live teacher reads the batch's images only: nothing more."""
        return []

    def graph_targets(self, images: Tensor, sizes: Tensor, side: list[Tensor]) -> list[Tensor]:
        """The teacher run on a one-canvas batch's images (``normalize_within``): its features, logits and FRS
        masks per level, in that order. It does not read the student, so ``FRSObjective.graph_terms`` may run it
        beside the student's pass."""
        b, _, h, w = images.shape
        with torch.no_grad(), teacher_autocast(images.device, self.autocast):
            out = self.teacher(self.teacher.normalize_within(images, sizes), [(h, w)] * b, detect=False)
            return [*out.features, *out.cls_logits, *frs_masks(out.cls_logits)]

    def graph_frs(self, adapters: FeatureAdapter, student_out, sizes: Tensor, side: list[Tensor],
                  targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Both FRS terms of a one-canvas batch from ``graph_targets``' tensors (``targets``: the teacher run on its
        images), as ``forward`` and ``FRSObjective.forward`` compute them."""
        n = len(self.teacher.strides)
        feats, logits, masks = targets[:n], targets[n:2 * n], targets[2 * n:]
        valid = positions_within(sizes, [tuple(f.shape[-2:]) for f in student_out.features], self.teacher.strides)
        return frs_losses(adapters(student_out.features), feats, student_out.cls_logits, logits, masks, valid)


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
        self.cfg = cfg.for_family(student.signature.family)  # alpha and beta left out: the family's official ones
        # distill.cuda_graphs: the cached side and both terms of a one-canvas batch as CUDA graphs (not a module:
        # nothing in it trains or is saved that the adapters and the teacher side do not hold already)
        self._graphs = GraphedTerms(teacher_side, self.adapters) if getattr(teacher_side, "cuda_graphs", False) else None
        self._beside = SideStream(cfg.teacher_beside)  # graph_terms' second stream for the teacher's side

    def checkpointed(self) -> dict[str, nn.Module]:
        return {"student": self.student, "adapters": self.adapters}

    def forward(self, batch: Batch, step: int) -> dict[str, Tensor]:
        out = self.student(batch.images, batch.image_sizes, batch.targets)
        losses = dict(out.losses)
        head = self.cfg.mask == "frs"
        graphed = (self._graphs is not None and head and torch.is_grad_enabled()
                   and self.teacher_side.graphed(batch))
        teacher = None if graphed else self.teacher_side(batch, need_logits=head)
        for lv, (fs, ft) in enumerate(zip(out.features, batch.teacher.features if graphed else teacher.features)):
            if fs.shape[-2:] != ft.shape[-2:]:
                raise FrsError(f"distill: level {self.student.level_names[lv]} student grid {tuple(fs.shape[-2:])} "
                               f"!= teacher grid {tuple(ft.shape[-2:])}")
        strides = self.student.strides
        device = out.features[0].device
        w = distill_weight(step, self.cfg.warmup_iters)
        if graphed:  # the cached side, the valid positions, the adapters and both terms replayed (train.graphed)
            self.teacher_side.check_batch(batch)
            sizes = image_sizes_on(batch.image_sizes, device)
            feature, head_term = self._graphs(out.features, out.cls_logits, batch.teacher, sizes)
        else:
            valid = valid_positions(batch.image_sizes, [f.shape[-2:] for f in out.features], strides, device)
            if self.cfg.mask == "gt":
                masks = gt_box_masks([t["boxes"] for t in batch.targets], [f.shape[-2:] for f in out.features],
                                     strides)
            else:
                masks = teacher.masks
            feature, head_term = frs_losses(self.adapters(out.features), teacher.features,
                                            out.cls_logits if head else None, teacher.cls_logits if head else None,
                                            masks, valid)
        losses["frs_feature"] = w * self.cfg.alpha * feature
        if head:
            losses["frs_head"] = w * self.cfg.beta * head_term
        return losses

    def graph_inputs(self, batch: Batch) -> list[Tensor] | None:
        """The batch's ``step_inputs`` and its teacher side's tensors, or None when its step runs only eagerly
        (GT masks, several canvases, a teacher side or student without a graph path)."""
        if self.cfg.mask != "frs" or not hasattr(self.teacher_side, "graph_inputs"):
            return None
        base = step_inputs(self.student, batch)
        side = None if base is None else self.teacher_side.graph_inputs(batch)
        return None if side is None else [*base, *side]

    def graph_terms(self, *inputs: Tensor) -> dict[str, Tensor]:
        """``forward``'s terms, unweighted, from ``graph_inputs``' tensors alone."""
        images, sizes, side = inputs[0], inputs[1], list(inputs[5:])
        # the teacher's side reads no student tensor: on CUDA it runs on a second stream beside the student's pass
        # (distill.teacher_beside), joined before the terms read it
        targets = self._beside.start(images.device, self.teacher_side.graph_targets, images, sizes, side)
        out = student_pass(self.student, *inputs[:5])
        self._beside.join(targets)
        terms = dict(out.losses)
        terms["frs_feature"], terms["frs_head"] = self.teacher_side.graph_frs(self.adapters, out, sizes, side, targets)
        return terms

    def term_weights(self, step: int) -> dict[str, float]:
        """What ``forward`` multiplies each FRS term by at ``step``."""
        w = distill_weight(step, self.cfg.warmup_iters)
        return {"frs_feature": w * self.cfg.alpha, "frs_head": w * self.cfg.beta}
