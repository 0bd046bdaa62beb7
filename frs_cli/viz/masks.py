"""FRS masks drawn over the image the teacher saw: one heat-map panel per FPN level.

Pure functions: tensors in, a ``PIL.Image`` (RGB) out. The only file I/O is ``save_png``.

Tensor contracts:
    image: ``(3, H, W)`` uint8, the view the teacher saw (resized, maybe flipped, NOT padded).
    mask: ``(h, w)`` float in [0, 1], one FPN level's FRS mask over the PADDED grid of that view; cell
        ``(r, c)`` covers image pixels ``[r*stride, (r+1)*stride) x [c*stride, (c+1)*stride)``.
    boxes_xyxy: ``(N, 4)`` float boxes in the same pixels as ``image`` (``x1, y1, x2, y2``).

Panel size rule: a panel is ``W * scale`` wide and ``H * scale + (TITLE_BAND_PX if title else 0)`` tall,
the title band sitting above the picture. ``level_panels`` puts ``n`` titled panels side by side with
``PANEL_GAP_PX`` between neighbours: ``n * W * scale + (n - 1) * PANEL_GAP_PX`` wide.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from frs_cli.errors import ConfigError
from frs_cli.files import atomic_path

log = logging.getLogger(__name__)

TITLE_BAND_PX = 16  # height of the dark band holding a title, px
PANEL_GAP_PX = 4  # space between neighbouring panels in level_panels, px
BOX_WIDTH_PX = 2  # box outline thickness in output pixels (not enlarged by scale)
BOX_COLOUR = (0, 255, 255)  # cyan: absent from the black-purple-orange-yellow heat ramp
TITLE_BAND_COLOUR = (16, 16, 16)
TITLE_TEXT_COLOUR = (235, 235, 235)
GAP_COLOUR = (255, 255, 255)
MASK_TOLERANCE = 1e-3  # mask values this far outside [0, 1] count as rounding and are clipped
MAX_PAD_PX = 128  # a mask grid may run past the image by at most this much padding (plus one cell)

# Heat ramp, dark to bright, in the spirit of perceptual maps like 'inferno': near-black, violet, crimson,
# orange, pale yellow. Luminance rises monotonically along it; values between stops are interpolated.
_RAMP_STOPS = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = torch.tensor([
    [0.0, 0.0, 5.0],
    [85.0, 15.0, 110.0],
    [185.0, 55.0, 85.0],
    [248.0, 140.0, 10.0],
    [252.0, 255.0, 165.0],
])


def heat_colours(values: Tensor) -> Tensor:
    """Map values in [0, 1] of any shape ``S`` to RGB floats in 0..255 of shape ``(3, *S)``."""
    v = values.float().clamp(0.0, 1.0)
    segments = len(_RAMP_STOPS) - 1
    idx = torch.clamp((v * segments).floor().long(), max=segments - 1)  # segment index per value
    t = (v - _RAMP_STOPS[idx]) / (_RAMP_STOPS[idx + 1] - _RAMP_STOPS[idx])
    lo, hi = _RAMP_COLOURS[idx], _RAMP_COLOURS[idx + 1]  # (*S, 3)
    rgb = lo + (hi - lo) * t.unsqueeze(-1)
    return rgb.movedim(-1, 0)


def _check_image(image) -> tuple[int, int]:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ConfigError(f"image: expected a (3, H, W) uint8 tensor, got {got}")
    h, w = int(image.shape[1]), int(image.shape[2])
    if h < 1 or w < 1:
        raise ConfigError(f"image: expected a non-empty (3, H, W) tensor, got {tuple(image.shape)}")
    return h, w


def _check_mask(mask, stride, image_hw: tuple[int, int]) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dim() != 2 or not mask.is_floating_point():
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ConfigError(f"mask: expected a 2-D (h, w) float tensor, got {got}")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ConfigError(f"stride: expected a positive integer, got {stride!r}")
    m = mask.detach().to("cpu", torch.float32)
    if m.numel() == 0:
        raise ConfigError(f"mask: expected a non-empty (h, w) tensor, got {tuple(m.shape)}")
    lo, hi = float(m.min()), float(m.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -MASK_TOLERANCE or hi > 1.0 + MASK_TOLERANCE:
        raise ConfigError(f"mask: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    (img_h, img_w), (rows, cols) = image_hw, m.shape
    if rows * stride < img_h or cols * stride < img_w:
        raise ConfigError(f"mask: expected a ({rows}, {cols}) grid at stride {stride} to cover the "
                          f"{img_h}x{img_w} image, got {rows * stride}x{cols * stride} px")
    if (rows - 1) * stride >= img_h + MAX_PAD_PX or (cols - 1) * stride >= img_w + MAX_PAD_PX:
        raise ConfigError(f"mask: expected a grid at stride {stride} about the {img_h}x{img_w} image "
                          f"(padded by at most {MAX_PAD_PX} px), got {rows}x{cols} cells: wrong stride?")
    return m.clamp(0.0, 1.0)


def _check_boxes(boxes) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ConfigError(f"boxes_xyxy: expected an (N, 4) tensor, got {got}")
    return boxes.detach().to("cpu", torch.float64)


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


def _draw_boxes(picture: Image.Image, boxes: Tensor, scale: int) -> None:
    """Outline each box; a box covers pixels ``floor(x1*s) .. ceil(x2*s) - 1``, outline drawn inside."""
    draw = ImageDraw.Draw(picture)
    width, height = picture.size
    for x1, y1, x2, y2 in boxes.tolist():
        left, top = max(0, math.floor(x1 * scale)), max(0, math.floor(y1 * scale))
        right, bottom = min(width - 1, math.ceil(x2 * scale) - 1), min(height - 1, math.ceil(y2 * scale) - 1)
        if right < left or bottom < top:
            continue  # empty or entirely outside the picture
        draw.rectangle([left, top, right, bottom], outline=BOX_COLOUR, width=BOX_WIDTH_PX)


def _add_title(picture: Image.Image, title: str) -> Image.Image:
    width, height = picture.size
    canvas = Image.new("RGB", (width, height + TITLE_BAND_PX), TITLE_BAND_COLOUR)
    canvas.paste(picture, (0, TITLE_BAND_PX))
    draw = ImageDraw.Draw(canvas)
    draw.text((3, 2), title, fill=TITLE_TEXT_COLOUR, font=ImageFont.load_default())  # clipped if too long
    return canvas


def heatmap_overlay(image: Tensor, mask: Tensor, stride: int, boxes_xyxy: Tensor | None = None,
                    alpha: float = 0.55, title: str | None = None, *, scale: int = 1) -> Image.Image:
    """One FRS mask as a heat map over the image.

    The mask is upsampled by NEAREST neighbour (each cell becomes a ``stride x stride`` block, so a cell
    shows exactly the pixels its feature location stands for), then cropped to ``(H, W)``. Each pixel is
    blended as ``(1 - a) * image + a * heat(m)`` with ``a = alpha * m``: a value of 0 leaves the image
    untouched, 1 paints ``alpha`` of the brightest heat colour. The picture is then enlarged ``scale``
    times (nearest), boxes are outlined ``BOX_WIDTH_PX`` thick in ``BOX_COLOUR``, and a title, if given,
    goes on a ``TITLE_BAND_PX`` dark band on top. Size: see the module docstring.

    Raises ``ConfigError`` for an image that is not ``(3, H, W)`` uint8, a mask that is not a 2-D float
    tensor with values in [0, 1] whose grid covers the image at ``stride``, bad boxes, alpha outside
    [0, 1] or a scale that is not a positive integer.
    """
    img_h, img_w = _check_image(image)
    m = _check_mask(mask, stride, (img_h, img_w))
    boxes = _check_boxes(boxes_xyxy) if boxes_xyxy is not None else None
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    _check_positive_int(scale, "scale")

    m = m.repeat_interleave(stride, dim=0).repeat_interleave(stride, dim=1)[:img_h, :img_w]
    weight = alpha * m  # (H, W)
    base = image.detach().to("cpu", torch.float32)
    blended = base * (1.0 - weight) + heat_colours(m) * weight
    pixels = blended.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(pixels)  # (H, W, 3) uint8 -> RGB
    if scale != 1:
        picture = picture.resize((img_w * scale, img_h * scale), Image.Resampling.NEAREST)
    if boxes is not None:
        _draw_boxes(picture, boxes, scale)
    return _add_title(picture, title) if title is not None else picture


def level_panels(image: Tensor, masks: Sequence[Tensor], strides: Sequence[int], names: Sequence[str],
                 boxes_xyxy: Tensor | None = None, scale: int = 1) -> Image.Image:
    """One titled ``heatmap_overlay`` panel per FPN level, side by side, lowest level first.

    As in the FRS paper's Fig. 3, low levels (small stride) light up small objects and high levels large
    ones. Each panel is titled ``'<name>  stride <s>  max <mask max, 2 decimals>'``; panels are separated
    by ``PANEL_GAP_PX`` of ``GAP_COLOUR``. Output: ``n * W * scale + (n - 1) * PANEL_GAP_PX`` wide,
    ``H * scale + TITLE_BAND_PX`` tall. ``ConfigError`` when the three sequences differ in length or
    are empty, or for any panel's inputs (see ``heatmap_overlay``).
    """
    if not (len(masks) == len(strides) == len(names)):
        raise ConfigError(f"level_panels: expected as many masks, strides and names, got "
                          f"{len(masks)}, {len(strides)} and {len(names)}")
    if not masks:
        raise ConfigError("level_panels: expected at least one level, got none")
    panels = []
    for mask, stride, name in zip(masks, strides, names):
        peak = float(mask.max()) if isinstance(mask, Tensor) and mask.numel() else float("nan")
        title = f"{name}  stride {stride}  max {peak:.2f}"
        panels.append(heatmap_overlay(image, mask, stride, boxes_xyxy, title=title, scale=scale))
    panel_w, panel_h = panels[0].size
    canvas = Image.new("RGB", (len(panels) * panel_w + (len(panels) - 1) * PANEL_GAP_PX, panel_h), GAP_COLOUR)
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * (panel_w + PANEL_GAP_PX), 0))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write ``image`` as PNG at ``path`` (parent folders created) via a temp file in the same folder and an
    atomic rename, so a reader never sees half a file. ``ConfigError`` if it is not a PIL image or the
    path cannot be written."""
    if not isinstance(image, Image.Image):
        raise ConfigError(f"save_png: expected a PIL image, got {type(image).__name__}")
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            image.save(f, format="PNG")
    except OSError as exc:
        raise ConfigError(f"save_png: expected a writable path, got {str(path)!r}: {exc.strerror or exc}") from None
    log.debug("wrote %s (%dx%d)", path, *image.size)
