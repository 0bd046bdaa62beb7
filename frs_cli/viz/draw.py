"""Drawing primitives every picture shares: the font, text bands, the heat ramp, a colour bar, PNG writing.

Pure PIL (a base dependency), so ``frs visualize``, ``frs report`` and the demo draw without matplotlib.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from frs_cli.errors import ConfigError
from frs_cli.files import atomic_path

log = logging.getLogger(__name__)

FONT_PX = 12  # text height of labels and titles, px
TEXT_COLOUR = (235, 235, 235)
DARK = (16, 16, 16)  # background of title bands and the figure frame
UNDEFINED_TEXT = "\u2013"

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


@functools.lru_cache(maxsize=8)
def font(size: int = FONT_PX) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (a fixed bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def text_width(text: str, size: int = FONT_PX) -> int:
    left, _, right, _ = font(size).getbbox(text)
    return int(right - left)


def heat_colours(values: Tensor) -> Tensor:
    """Map values in [0, 1] of any shape ``S`` to RGB floats in 0..255 of shape ``(3, *S)``."""
    v = values.float().clamp(0.0, 1.0)
    segments = len(_RAMP_STOPS) - 1
    idx = torch.clamp((v * segments).floor().long(), max=segments - 1)  # segment index per value
    t = (v - _RAMP_STOPS[idx]) / (_RAMP_STOPS[idx + 1] - _RAMP_STOPS[idx])
    lo, hi = _RAMP_COLOURS[idx], _RAMP_COLOURS[idx + 1]  # (*S, 3)
    rgb = lo + (hi - lo) * t.unsqueeze(-1)
    return rgb.movedim(-1, 0)


def format_value(value: float, top: float) -> str:
    """A mask value for a label: 2 decimals, 3 when the scale's top ``top`` is below 0.1 (weak masks)."""
    return f"{value:.3f}" if top < 0.1 else f"{value:.2f}"


TITLE_INSET_PX = 4  # a title band's text starts this far from its left edge, px


def title_band(width: int, text: str, height: int, colour=DARK) -> Image.Image:
    """A ``width x height`` band of ``colour`` with ``text`` at its left, vertically centred (clipped if long)."""
    band = Image.new("RGB", (width, height), colour)
    top = max(0, (height - FONT_PX) // 2 - 1)
    ImageDraw.Draw(band).text((TITLE_INSET_PX, top), text, fill=TEXT_COLOUR, font=font())
    return band


TICK_PX = 3  # a colour bar's tick mark, px long, from the bar's right edge
TICK_TEXT_X = 12  # where its text starts, px right of the bar's left part: a gap after the tick, so that the tick
#                   does not read as a minus sign ("-0.39" where the bar meant 0.39)


def colour_bar(height: int, vmax: float, label: str, bar_px: int = 16) -> Image.Image:
    """A vertical heat-ramp bar, 0 at the bottom and ``vmax`` at the top, ticked at 0, vmax/2 and vmax.

    ``label`` is written above the bar. The picture is ``bar_px`` plus room for the tick labels wide.
    """
    ticks = [(frac, format_value(frac * vmax, vmax)) for frac in (0.0, 0.5, 1.0)]
    label_w = max(text_width(t) for _, t in ticks) + TICK_TEXT_X + 2
    top_pad, bottom_pad = FONT_PX + 8, FONT_PX // 2 + 2
    width = max(bar_px + label_w, text_width(label) + 6)
    picture = Image.new("RGB", (width, height), DARK)
    inner = max(2, height - top_pad - bottom_pad)
    ramp = torch.linspace(1.0, 0.0, inner).unsqueeze(1).expand(inner, bar_px)  # (inner, bar_px): top is vmax
    pixels = heat_colours(ramp).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    picture.paste(Image.fromarray(pixels), (3, top_pad))
    draw = ImageDraw.Draw(picture)
    draw.text((3, 2), label, fill=TEXT_COLOUR, font=font())
    for frac, text in ticks:
        y = top_pad + round((1.0 - frac) * (inner - 1))
        draw.line([(3 + bar_px, y), (3 + bar_px + TICK_PX - 1, y)], fill=TEXT_COLOUR)
        draw.text((TICK_TEXT_X + bar_px, y - FONT_PX // 2 - 1), text, fill=TEXT_COLOUR, font=font())
    return picture


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
