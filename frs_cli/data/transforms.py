"""A view's geometry (``frs_cli.data.geometry``) applied to tensors: images resized and flipped, boxes mapped to
the view and back, images and boxes padded into batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from frs_cli.data.geometry import ViewGeometry
from frs_cli.errors import ConfigError


def apply_to_image(image: Tensor, geom: ViewGeometry) -> Tensor:
    """Resize and flip one image; no padding (batching pads, see ``pad_batch``).

    Args:
        image: ``(3, orig_h, orig_w)`` uint8.
    Returns:
        ``(3, resized_h, resized_w)`` uint8. Bilinear, ``align_corners=False``, no antialiasing
        (torchvision's detection transform does the same), rounded to the nearest integer.
    """
    out = resize_image(image, geom)
    if geom.hflip:
        out = out.flip(-1)
    return out.contiguous()


def resize_image(image: Tensor, geom: ViewGeometry) -> Tensor:
    """``apply_to_image`` without the flip: the view's resize alone (``image`` itself when the size is kept). Both
    views of an image share it, so it can be computed once and flipped for ``hflip``."""
    if image.shape[-2:] != (geom.orig_h, geom.orig_w):
        raise ConfigError(
            f"image size: expected {geom.orig_h}x{geom.orig_w} as recorded, got "
            f"{image.shape[-2]}x{image.shape[-1]}"
        )
    if (geom.resized_h, geom.resized_w) == (geom.orig_h, geom.orig_w):
        return image
    x = image.unsqueeze(0).float()
    x = F.interpolate(x, size=(geom.resized_h, geom.resized_w), mode="bilinear", align_corners=False)
    return x.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def apply_to_boxes(boxes_xyxy: Tensor, geom: ViewGeometry) -> Tensor:
    """Map ``(N, 4)`` boxes from original-image pixels to view pixels (float32)."""
    b = boxes_xyxy.to(torch.float32).reshape(-1, 4)
    out = b * torch.tensor([geom.scale_x, geom.scale_y, geom.scale_x, geom.scale_y], dtype=torch.float32)
    if geom.hflip:
        out = torch.stack([geom.resized_w - out[:, 2], out[:, 1], geom.resized_w - out[:, 0], out[:, 3]], dim=1)
    return out


def invert_boxes(boxes_xyxy: Tensor, geom: ViewGeometry) -> Tensor:
    """Map ``(N, 4)`` boxes from view pixels back to original-image pixels (float32)."""
    b = boxes_xyxy.to(torch.float32).reshape(-1, 4)
    if geom.hflip:
        b = torch.stack([geom.resized_w - b[:, 2], b[:, 1], geom.resized_w - b[:, 0], b[:, 3]], dim=1)
    return b / torch.tensor([geom.scale_x, geom.scale_y, geom.scale_x, geom.scale_y], dtype=torch.float32)


def pad_batch(images: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Stack ``(3, h_i, w_i)`` images into ``(B, 3, H, W)``, zero-padded at the bottom and right."""
    return pad_into(images[0].new_empty((len(images), images[0].shape[0], size[0], size[1])), images)


def pad_into(out: Tensor, parts: Sequence[Tensor]) -> Tensor:
    """Write ``(..., h_i, w_i)`` tensors into ``out`` ``(len(parts), ..., H, W)``, each zero-padded at the bottom and
    right; only the padding is zeroed (each part's bytes are written once), so ``out`` may start uninitialised."""
    h, w = out.shape[-2:]
    for i, p in enumerate(parts):
        ph, pw = p.shape[-2:]
        out[i, ..., :ph, :pw] = p
        if ph < h:
            out[i, ..., ph:, :] = 0
        if pw < w:
            out[i, ..., :ph, pw:] = 0
    return out


def pad_boxes(boxes: Sequence[Tensor], device: torch.device, rows: int = 1) -> tuple[Tensor, Tensor]:
    """Per-image ``(M_i, 4)`` xyxy boxes -> ``(B, M, 4)`` float32 and ``valid`` ``(B, M)`` bool,
    M = max(``rows``, max M_i).

    Padding rows hold the box (0, 0, 1, 1), so that anything computed on them (IoU, box encoding) stays finite;
    ``valid`` marks the real boxes. Lets box code run batched instead of once per image.
    """
    m = max([rows] + [len(b) for b in boxes])
    padded = torch.zeros(len(boxes), m, 4, device=device)  # built on the device: no host copy, no stream sync
    padded[..., 2:] = 1.0
    valid = torch.zeros(len(boxes), m, dtype=torch.bool, device=device)
    for i, b in enumerate(boxes):
        padded[i, : len(b)] = b.to(device=device, dtype=torch.float32)
        valid[i, : len(b)] = True
    return padded, valid
