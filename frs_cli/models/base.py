"""The one interface every detector adapter offers, and what all of them share.

An adapter wraps a torchvision detector (or one built from torchvision's parts) and, from one pass of the
backbone, returns what distillation needs: the per-level FPN features, the per-level classification logits
in the head's own ``(B, A*K, H, W)`` layout, and in training the detector's own GT losses.

Which logits count as "classification" is the family's FRS channel set (FRS.md): A x K class logits for
RetinaNet, K class logits for FCOS (no centerness) and GFL, the A = 3 RPN objectness logits for Faster R-CNN.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from frs_cli.archs import FAMILIES, FrsSignature, LevelSpec
from frs_cli.errors import FrsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How a body's weights expect pixels: (mean, std) in 0..255 units in the channel order the body reads, and
# whether that order is BGR. The caffe bodies (Detectron's ImageNet weights) read BGR, mean-subtracted, std 1.
PIXEL_NORMS = {
    "imagenet_rgb": (tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD), False),
    # the same ImageNet statistics as mmdetection's pytorch-style configs write them: as float32 they differ
    # from float32(0.485) * 255 in the last bit, enough to move a deep random network's boxes by 1e-3 px
    "mmdet_rgb": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False),
    "detectron_bgr": ((102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0), True),  # open-mmlab://detectron/resnet*_caffe
    "detectron2_bgr": ((103.53, 116.28, 123.675), (1.0, 1.0, 1.0), True),  # open-mmlab://detectron2/resnet*_caffe
}


@dataclass
class DetectorOutput:
    features: list[Tensor]  # per level (B, C, H_l, W_l), finest first
    cls_logits: list[Tensor]  # per level (B, A*K, H_l, W_l): channel a*K + k is anchor a, class k
    losses: dict[str, Tensor] = field(default_factory=dict)  # GT losses, when targets were given
    detections: list[dict[str, Tensor]] | None = None  # per image boxes (xyxy, view pixels), scores, labels


@dataclass(frozen=True)
class FpnLayout:
    """A family's FPN outputs, finest first: their names and strides (input pixels per position)."""

    names: tuple[str, ...]
    strides: tuple[int, ...]

    @staticmethod
    def of(family: str) -> FpnLayout:
        """The FPN levels ``frs_cli.archs`` declares for ``family``, where the registry and the loss read them."""
        names, strides = zip(*FAMILIES[family].levels)
        return FpnLayout(names, strides)

    def levels(self, channels: int) -> list[LevelSpec]:
        """One ``LevelSpec`` per output, all of ``channels`` channels."""
        return [LevelSpec(n, s, channels) for n, s in zip(self.names, self.strides)]


class TowerClsHead(nn.Module):
    """A torchvision classification head (a conv tower ``conv``, then a logits conv ``cls_logits``: RetinaNet's,
    FCOS's) run per level: a feature list -> per-level ``(B, A*K, H, W)`` logits."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.head.cls_logits(self.head.conv(f)) for f in features]


@dataclass
class DensePass:
    """One pass of backbone and classification head, as ``Detector.forward`` hands it to the family's
    ``losses_and_detections`` when losses or detections are asked for."""

    x: Tensor  # (B, 3, H, W) the normalised batch
    image_sizes: list[tuple[int, int]]  # the valid (h, w) of each image
    named: dict[str, Tensor]  # the FPN outputs by name ("0".."3", "pool" for Faster R-CNN's ROI pooler)
    features: list[Tensor]  # the same, per level (B, C, H_l, W_l), finest first
    cls_logits: list[Tensor]  # per level (B, cls_channels, H_l, W_l)
    towers: list[Tensor] | None  # what ``classify`` computed on the way that the rest reuses, if anything

    def anchors(self, generator: nn.Module) -> list[Tensor]:
        """``generator``'s anchors (or points) for this batch: per image ``(sum_l H_l*W_l*A, 4)`` xyxy, float32.

        A generator makes its anchors in the dtype of the feature maps it is given, and under bf16 autocast the FPN
        outputs are bf16, whose steps are 2 px from 256 px on and 8 px from 1024 px: every anchor of a large image
        would be rounded, and the GT loss matched and encoded boxes against the rounded ones. It reads only the
        maps' grid, dtype and device, so it is given empty float32 maps of the features' grids."""
        grids = [f.new_empty((0, 0, *f.shape[-2:]), dtype=torch.float32) for f in self.features]
        return generator(ImageList(self.x, self.image_sizes), grids)


class Detector(nn.Module):
    """Base adapter. Subclasses set ``family``, ``levels``, keep the wrapped detector as ``self.model`` (its
    ``backbone`` returns the FPN outputs by name) and implement ``classify``, ``losses_and_detections`` and
    the head hooks below.

    ``forward(images, image_sizes, targets=None, detect=None)``:
        images: ``(B, 3, H, W)`` uint8, each image at the top-left, zero padding bottom/right, H and W
            multiples of the geometry's ``size_divisible``; or float32, already through ``normalize``.
        image_sizes: the valid ``(h, w)`` of each image.
        targets: per image ``{"boxes": (N, 4) float32 xyxy view pixels, "labels": (N,) int64}``; when
            given, ``losses`` holds the detector's GT losses from this same pass.
        detect: post-process to detections (default: when not training).
    """

    family: str = ""
    arch: str = ""
    # the GT loss also takes the targets already padded (``retinanet_loss.PaddedTargets``), so that a training step
    # of fixed shapes can be one CUDA graph (``frs_cli.train.step_graphs``)
    takes_padded_targets: bool = False

    def __init__(self, num_classes: int, levels: list[LevelSpec]):
        super().__init__()
        self.num_classes = num_classes
        self.levels = levels
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.bgr = False  # feed the body BGR (caffe bodies) rather than the RGB images frs decodes

    def set_pixel_norm(self, name: str) -> None:
        """Normalise inputs as the body's weights expect: a key of ``PIXEL_NORMS``."""
        if name not in PIXEL_NORMS:
            raise FrsError(f"pixel norm: expected one of {sorted(PIXEL_NORMS)}, got {name!r}")
        mean, std, self.bgr = PIXEL_NORMS[name]
        self.pixel_mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        self.pixel_std.copy_(torch.tensor(std).view(1, 3, 1, 1))

    @property
    def strides(self) -> list[int]:
        return [lv.stride for lv in self.levels]

    @property
    def level_names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """uint8 RGB batch -> float, normalized as ``set_pixel_norm`` chose (default ImageNet RGB), padding
        exactly zero (as torchvision and mmdetection batch images). A float batch is taken as this method's
        output and returned as it is (teacher-cache normalises outside the CUDA graph it replays the body in)."""
        if images.is_floating_point():
            return images
        x = self._standardized(images)
        h, w = x.shape[-2:]
        for i, (vh, vw) in enumerate(image_sizes):  # slices, not a sizes tensor: copying one to the GPU syncs
            if vh < h:
                x[i, :, vh:, :] = 0.0
            if vw < w:
                x[i, :, :vh, vw:] = 0.0
        return x

    def _standardized(self, images: Tensor) -> Tensor:
        """uint8 RGB batch -> float in the channel order and statistics ``set_pixel_norm`` chose, padding not zeroed."""
        if self.bgr:
            images = images.flip(1)
        return (images.float() - self.pixel_mean) / self.pixel_std

    def normalize_within(self, images: Tensor, sizes: Tensor) -> Tensor:
        """``normalize`` with the valid sizes as a ``(B, 2)`` long tensor on the images' device: the same values,
        the padding zeroed by one comparison instead of a slice per image, so that nothing depends on the sizes'
        values on the host (a CUDA graph replays it for any sizes)."""
        x = self._standardized(images)
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device) < sizes[:, 0:1]  # (B, H)
        cols = torch.arange(w, device=x.device) < sizes[:, 1:2]  # (B, W)
        return torch.where((rows[:, :, None] & cols[:, None, :])[:, None], x, 0.0)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets=None, detect=None) -> DetectorOutput:
        x = self.normalize(images, image_sizes)
        named = self.model.backbone(x)
        features = list(named.values())
        cls_logits, towers = self.classify(features)
        out = DetectorOutput(features=features, cls_logits=cls_logits)
        detect = (not self.training) if detect is None else detect
        if targets is None and not detect:
            return out  # what distillation takes from a detector: one pass of backbone and class head
        dense = DensePass(x, list(image_sizes), named, features, cls_logits, towers)
        out.losses, out.detections = self.losses_and_detections(dense, targets, detect)
        return out

    def classify(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor] | None]:
        """Per-level class logits ``(B, cls_channels, H_l, W_l)`` of the FPN ``features``, and any per-level
        tensors computed on the way that ``losses_and_detections`` reuses (else None)."""
        raise NotImplementedError

    def losses_and_detections(self, dense: DensePass, targets: list[dict[str, Tensor]] | None,
                              detect: bool) -> tuple[dict[str, Tensor], list[dict[str, Tensor]] | None]:
        """The GT losses when ``targets`` are given (else ``{}``), the detections when ``detect`` (else None)."""
        raise NotImplementedError

    @property
    def signature(self) -> FrsSignature:
        return FrsSignature(self.family, tuple(self.levels), self.cls_channels)

    @property
    def cls_channels(self) -> int:
        """Channels of each level's ``cls_logits``: the channel set the FRS mask takes its max over."""
        raise NotImplementedError

    # What the cache stores to recompute teacher logits from cached features.
    def cls_head_spec(self) -> dict:
        """Enough to rebuild ``cls_head()`` with ``frs_cli.models.build_cls_head``: ``family``, ``cls_channels``, ..."""
        raise NotImplementedError

    def adapt_torchvision_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict of torchvision's weights enum, in this adapter's layout (default: unchanged)."""
        return state

    def cls_head(self) -> nn.Module:
        """The classification head as a module mapping a feature list to a cls-logit list."""
        raise NotImplementedError

    def core(self) -> nn.Module:
        """The wrapped detector whose ``state_dict`` is saved (torchvision-compatible keys): every adapter keeps
        it as ``self.model``."""
        return self.model


def drop_biases_before_group_norms(module: nn.Module) -> int:
    """Zero and freeze the bias of every convolution followed by a GroupNorm in one of ``module``'s ``Sequential``s:
    mmdetection's towers have none there (``ConvModule``'s ``conv_bias='auto'``), torchvision's have one. The
    parameter stays (state dicts keep their keys; the mmdetection converter fills it with zeros) but is 0 and does
    not train, so the model is mmdetection's. Returns how many biases it froze."""
    frozen = 0
    for seq in (m for m in module.modules() if isinstance(m, nn.Sequential)):
        for conv, norm in itertools.pairwise(seq):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.GroupNorm) and conv.bias is not None:
                with torch.no_grad():
                    conv.bias.zero_()
                conv.bias.requires_grad_(False)
                frozen += 1
    return frozen


def to_head_layout(per_level: list[Tensor], channels_per_anchor: int) -> Tensor:
    """``(B, A*C, H, W)`` per level -> ``(B, sum H*W*A, C)``, the order torchvision's heads produce."""
    out = []
    for t in per_level:
        b, _, h, w = t.shape
        out.append(t.view(b, -1, channels_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels_per_anchor))
    return torch.cat(out, dim=1)



def fingerprint_state_dict(state_dict: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted name order (first 16 hex)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
