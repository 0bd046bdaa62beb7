"""FRS masks drawn over the image the teacher saw: one heat-map panel per FPN level, one colour scale for all.

Pure functions: tensors in, a ``PIL.Image`` (RGB) out (``save_png`` in ``viz.draw`` writes it).

Tensor contracts:
    image: ``(3, H, W)`` uint8, the view the teacher saw (resized, maybe flipped, NOT padded).
    mask: ``(h, w)`` float in [0, 1], one FPN level's FRS mask over the PADDED grid of that view; cell
        ``(r, c)`` covers image pixels ``[r*stride, (r+1)*stride) x [c*stride, (c+1)*stride)``.
    boxes_xyxy: ``(N, 4)`` float boxes in the same pixels as ``image`` (``x1, y1, x2, y2``).

A panel is the image in grey with the mask's heat on top: ``(1 - alpha) * grey + alpha * heat(m / vmax)``.
``vmax`` is one number for every panel of a figure (by default the largest mask value shown), so a level
that is bright is bright compared with the others, and the colour bar beside the panels says what
brightest means. FRS masks are often far below 1 (a weak teacher's max is ~0.2): scaling by ``vmax``
instead of 1 is what makes them visible at all.

Size rules: a panel is ``W * scale`` wide and ``H * scale + (TITLE_BAND_PX if title else 0)`` tall, the title
band above the picture; a title wider than that (a narrow image) widens the panel to its text, the picture at the
left on the band's dark colour. In a figure every panel is as wide as the widest. ``mask_figure`` with ``n``
levels and ``r`` rows is a ``HEADER_PX`` band on top of ``r`` rows (each ``ROW_LABEL_PX`` (only when ``r > 1``)
+ ``TITLE_BAND_PX + H * scale`` tall, ``PANEL_GAP_PX`` apart) of ``n`` panels ``PANEL_GAP_PX`` apart, and a
colour bar ``PANEL_GAP_PX`` to their right. Where the header does not fit that width in one line, it takes two
bands (the title, then the colour scale), and the figure is widened where either line still does not fit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from frs_cli.errors import ConfigError
from frs_cli.viz.draw import (
    DARK,
    TITLE_INSET_PX,
    colour_bar,
    format_value,
    heat_colours,
    save_png,
    text_width,
    title_band,
)

__all__ = ["grey_image", "heat_colours", "heatmap_overlay", "level_panels", "mask_figure", "save_png"]

log = logging.getLogger(__name__)

TITLE_BAND_PX = 16  # height of the dark band holding a panel's title, px
HEADER_PX = 20  # height of a line of the figure's top band (its title and the colour scale), px
ROW_LABEL_PX = 16  # height of a row's label band in a figure of several rows, px
PANEL_GAP_PX = 4  # space between neighbouring panels, rows and the colour bar, px
BOX_WIDTH_PX = 2  # box outline thickness in output pixels (not enlarged by scale)
BOX_COLOUR = (0, 255, 255)  # cyan: absent from the black-purple-orange-yellow heat ramp
GAP_COLOUR = DARK
HEAT_ALPHA = 0.7  # share of the heat colour in a panel pixel; the rest is the greyed image
GREY_FLOOR, GREY_GAIN = 70.0, 0.45  # grey = GREY_FLOOR + GREY_GAIN * luminance: a dim, flat copy of the image
MASK_TOLERANCE = 1e-3  # mask values this far outside [0, 1] count as rounding and are clipped
MAX_PAD_PX = 128  # a mask grid may run past the image by at most this much padding (plus one cell)
MIN_VMAX = 1e-6  # a figure of all-zero masks uses vmax 1 instead of dividing by ~0


def grey_image(image: Tensor) -> Tensor:
    """``(3, H, W)`` uint8 -> ``(3, H, W)`` float grey copy in ``GREY_FLOOR .. GREY_FLOOR + GREY_GAIN * 255``.

    Luminance with the Rec. 601 weights; dimmed and flattened so the heat colours, not the image's own
    colours, carry the picture.
    """
    _check_image(image)
    rgb = image.detach().to("cpu", torch.float32)
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # (H, W)
    return (GREY_FLOOR + GREY_GAIN * luminance).unsqueeze(0).expand(3, -1, -1)


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


def _add_title(picture: Image.Image, title: str, width: int = 0) -> Image.Image:
    """``picture`` under a band holding ``title``, at least ``width`` wide and never narrower than the title."""
    width = max(picture.width, width, _title_width(title))
    height = picture.height
    canvas = Image.new("RGB", (width, height + TITLE_BAND_PX), DARK)
    canvas.paste(title_band(width, title, TITLE_BAND_PX), (0, 0))
    canvas.paste(picture, (0, TITLE_BAND_PX))
    return canvas


def _check_vmax(vmax) -> float:
    if not isinstance(vmax, (int, float)) or isinstance(vmax, bool) or not (math.isfinite(vmax) and vmax > 0):
        raise ConfigError(f"vmax: expected a positive number (the mask value drawn brightest), got {vmax!r}")
    return float(vmax)


def heatmap_overlay(image: Tensor, mask: Tensor, stride: int, boxes_xyxy: Tensor | None = None,
                    alpha: float = HEAT_ALPHA, title: str | None = None, *, scale: int = 1,
                    vmax: float | None = None) -> Image.Image:
    """One FRS mask as a heat map over the greyed image.

    The mask is upsampled by NEAREST neighbour (each cell becomes a ``stride x stride`` block, so a cell
    shows exactly the pixels its feature location stands for), then cropped to ``(H, W)``. Each pixel is
    ``(1 - alpha) * grey + alpha * heat(min(m / vmax, 1))``; ``vmax`` defaults to this mask's max. The
    picture is then enlarged ``scale`` times (nearest), boxes are outlined ``BOX_WIDTH_PX`` thick in
    ``BOX_COLOUR``, and a title, if given, goes on a ``TITLE_BAND_PX`` dark band on top (the panel widened to
    the title where the picture is narrower).

    Raises ``ConfigError`` for an image that is not ``(3, H, W)`` uint8, a mask that is not a 2-D float
    tensor with values in [0, 1] whose grid covers the image at ``stride``, bad boxes, alpha outside
    [0, 1], a vmax that is not positive or a scale that is not a positive integer.
    """
    img_h, img_w = _check_image(image)
    m = _check_mask(mask, stride, (img_h, img_w))
    boxes = _check_boxes(boxes_xyxy) if boxes_xyxy is not None else None
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    _check_positive_int(scale, "scale")
    top = _check_vmax(vmax) if vmax is not None else max(float(m.max()), MIN_VMAX)

    m = m.repeat_interleave(stride, dim=0).repeat_interleave(stride, dim=1)[:img_h, :img_w]
    blended = grey_image(image) * (1.0 - alpha) + heat_colours(m / top) * alpha
    pixels = blended.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(pixels)  # (H, W, 3) uint8 -> RGB
    if scale != 1:
        picture = picture.resize((img_w * scale, img_h * scale), Image.Resampling.NEAREST)
    if boxes is not None:
        _draw_boxes(picture, boxes, scale)
    return _add_title(picture, title) if title is not None else picture


def mask_figure(image: Tensor, rows: Sequence[tuple[str, Sequence[Tensor]]], strides: Sequence[int],
                names: Sequence[str], boxes_xyxy: Tensor | None = None, *, scale: int = 1,
                vmax: float | None = None, title: str = "FRS mask") -> Image.Image:
    """Rows of per-level panels over one image (one row per mask source), one colour scale, a colour bar.

    ``rows``: ``(label, masks)`` pairs, ``masks`` one per level in the order of ``strides`` and ``names``
    (lowest level first: as in the FRS paper's Fig. 3, low levels light up small objects, high levels large
    ones). Each panel is titled ``'<name>  stride <s>  max <mask max>'`` (2 decimals; 3 when vmax < 0.1). ``vmax`` (default: the
    largest value of every mask shown) is the value drawn brightest in every panel; the header says
    ``'<title>  |  colour: 0 to <vmax>, one scale for all panels'`` and the colour bar repeats it. With
    several rows each gets its ``label`` on a band above it. Size: see the module docstring.
    ``ConfigError`` for no rows, a row whose masks do not match ``strides``/``names``, or bad panel inputs.
    """
    if not rows:
        raise ConfigError("mask_figure: expected at least one row of masks, got none")
    if not (len(strides) == len(names)) or not names:
        raise ConfigError(f"mask_figure: expected as many strides as names (at least one), got "
                          f"{len(strides)} and {len(names)}")
    for label, masks in rows:
        if len(masks) != len(names):
            raise ConfigError(f"mask_figure: expected one mask per level ({len(names)}) in row {label!r}, "
                              f"got {len(masks)}")
    if vmax is None:
        peaks = [float(m.max()) for _, masks in rows for m in masks if isinstance(m, Tensor) and m.numel()]
        vmax = max(max(peaks, default=0.0), 0.0)
        vmax = vmax if vmax > MIN_VMAX else 1.0
    vmax = _check_vmax(vmax)
    row_pictures = []
    titles = [[f"{name}  stride {stride}  max {format_value(_peak(mask), vmax)}" for mask, stride, name
               in zip(masks, strides, names)] for _, masks in rows]
    title_w = max(_title_width(t) for row in titles for t in row)  # every panel as wide as the widest title
    for (label, masks), row_titles in zip(rows, titles):
        panels = [_add_title(heatmap_overlay(image, mask, stride, boxes_xyxy, scale=scale, vmax=vmax), t, title_w)
                  for mask, stride, t in zip(masks, strides, row_titles)]
        pw, ph = panels[0].size
        row = Image.new("RGB", (len(panels) * pw + (len(panels) - 1) * PANEL_GAP_PX,
                                ph + (ROW_LABEL_PX if len(rows) > 1 else 0)), GAP_COLOUR)
        if len(rows) > 1:
            row.paste(title_band(row.width, label, ROW_LABEL_PX, colour=(40, 40, 48)), (0, 0))
        for i, panel in enumerate(panels):
            row.paste(panel, (i * (pw + PANEL_GAP_PX), row.height - ph))
        row_pictures.append(row)
    body_w = row_pictures[0].width
    body_h = sum(r.height for r in row_pictures) + (len(row_pictures) - 1) * PANEL_GAP_PX
    bar = colour_bar(body_h, vmax, "mask S")
    width = body_w + PANEL_GAP_PX + bar.width
    lines = _header_lines(title, f"colour: 0 to {format_value(vmax, vmax)}, one scale for all panels", width)
    width = max(width, *(_title_width(line) for line in lines))  # no header cut
    header_h = len(lines) * HEADER_PX
    canvas = Image.new("RGB", (width, header_h + body_h), GAP_COLOUR)
    for i, line in enumerate(lines):
        canvas.paste(title_band(width, line, HEADER_PX), (0, i * HEADER_PX))
    y = header_h
    for row in row_pictures:
        canvas.paste(row, (0, y))
        y += row.height + PANEL_GAP_PX
    canvas.paste(bar, (body_w + PANEL_GAP_PX, header_h))
    return canvas


def _peak(mask) -> float:
    return float(mask.max()) if isinstance(mask, Tensor) and mask.numel() else float("nan")


def _title_width(title: str) -> int:
    """The width a title band needs to show ``title`` whole, px."""
    return text_width(title) + 2 * TITLE_INSET_PX


def _header_lines(title: str, scale: str, width: int) -> list[str]:
    """The figure's header: ``'<title>  |  <scale>'`` on one line where it fits in ``width`` (with the band's inset on
    either side), else two lines."""
    one = f"{title}  |  {scale}"
    return [one] if _title_width(one) <= width else [title, scale]


def level_panels(image: Tensor, masks: Sequence[Tensor], strides: Sequence[int], names: Sequence[str],
                 boxes_xyxy: Tensor | None = None, scale: int = 1, *, vmax: float | None = None,
                 title: str = "FRS mask") -> Image.Image:
    """``mask_figure`` with one row: the levels of one mask source side by side.

    ``ConfigError`` when the three sequences differ in length or are empty, or for any panel's inputs.
    """
    if not (len(masks) == len(strides) == len(names)):
        raise ConfigError(f"level_panels: expected as many masks, strides and names, got "
                          f"{len(masks)}, {len(strides)} and {len(names)}")
    if not masks:
        raise ConfigError("level_panels: expected at least one level, got none")
    return mask_figure(image, [("", masks)], strides, names, boxes_xyxy, scale=scale, vmax=vmax, title=title)
