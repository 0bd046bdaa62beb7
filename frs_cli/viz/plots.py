"""Line charts drawn with PIL, and the run report built from them (val AP per epoch, each loss term per iteration).

Pure functions: series in, a ``PIL.Image`` (RGB) out; no matplotlib, so reports work with the base install.
A series is ``(label, xs, ys)``; runs keep their colour in every chart of a report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from frs_cli.errors import ConfigError
from frs_cli.viz.draw import FONT_PX, font, text_width

# Distinct, colour-blind-friendly line colours (Okabe-Ito order), then darker repeats.
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
           (240, 228, 66), (0, 0, 0)]
CHART_W, CHART_H = 440, 260  # one chart, px
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 12, 24, 34  # plot area inside a chart, px
INK, GRID, PAPER = (30, 30, 30), (225, 225, 225), (255, 255, 255)
LINE_PX = 2


def colour_of(i: int) -> tuple[int, int, int]:
    base = PALETTE[i % len(PALETTE)]
    return base if i < len(PALETTE) else tuple(c * 2 // 3 for c in base)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = [round(first, 12)]
    while ticks[-1] < hi - step * 1e-9:  # up to the first tick at or above hi
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def _tick_text(value: float, log_y: bool) -> str:
    if log_y:
        return f"1e{round(value)}" if abs(value) >= 3 else f"{10 ** value:g}"
    return f"{value:.4g}"


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
               colours: dict[str, tuple[int, int, int]], *, log_y: bool = False, markers: bool = False,
               size: tuple[int, int] = (CHART_W, CHART_H)) -> Image.Image:
    """One chart: a line per series in its label's colour (``colours[label]``), axes with round ticks.

    ``log_y`` draws log10 of the values (non-positive values are left out). ``markers`` draws a dot per
    point (for short series such as AP per epoch). An empty chart says "no data".
    """
    width, height = size
    picture = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(picture)
    draw.text((MARGIN_L, 4), f"{title} (log scale)" if log_y else title, fill=INK, font=font())
    left, top, right, bottom = MARGIN_L, MARGIN_T, width - MARGIN_R, height - MARGIN_B
    points = []
    for label, xs, ys in series:
        pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        if log_y:
            pairs = [(x, math.log10(y)) for x, y in pairs if y > 0]
        if pairs:
            points.append((label, pairs))
    if not points:
        draw.rectangle([left, top, right, bottom], outline=INK)
        draw.text((left + 8, top + 8), "no data", fill=INK, font=font())
        return picture
    x_lo = min(x for _, p in points for x, _ in p)
    x_hi = max(x for _, p in points for x, _ in p)
    y_lo = min(y for _, p in points for _, y in p)
    y_hi = max(y for _, p in points for _, y in p)
    if not log_y:
        y_lo = min(y_lo, 0.0) if y_lo >= 0 and y_hi > 0 and y_lo < 0.5 * y_hi else y_lo  # start at 0 when near
    x_ticks, y_ticks = nice_ticks(x_lo, x_hi), nice_ticks(y_lo, y_hi)
    if log_y:
        y_ticks = [float(v) for v in range(math.floor(y_lo), math.ceil(y_hi) + 1)] or y_ticks
    x_lo, x_hi = min(x_ticks[0], x_lo), max(x_ticks[-1], x_hi)
    y_lo, y_hi = min(y_ticks[0], y_lo), max(y_ticks[-1], y_hi)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left), bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    for t in x_ticks:
        x, _ = px(t, y_lo)
        draw.line([(x, top + 1), (x, bottom - 1)], fill=GRID)
        text = f"{t:g}"
        at = min(max(x - text_width(text) / 2, 0), width - 1 - text_width(text))  # the last tick's text kept whole
        draw.text((at, bottom + 3), text, fill=INK, font=font())
    for t in y_ticks:
        _, y = px(x_lo, t)
        draw.line([(left + 1, y), (right - 1, y)], fill=GRID)
        text = _tick_text(t, log_y)
        draw.text((left - 4 - text_width(text), y - FONT_PX / 2 - 1), text, fill=INK, font=font())
    draw.text(((left + right) / 2 - text_width(xlabel) / 2, bottom + FONT_PX + 6), xlabel, fill=INK, font=font())
    draw.rectangle([left, top, right, bottom], outline=INK)
    for label, pairs in points:
        colour = colours.get(label, INK)
        xy = [px(x, y) for x, y in pairs]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=LINE_PX, joint="curve")
        if markers or len(xy) == 1:
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    return picture


def legend(labels: Sequence[str], colours: dict[str, tuple[int, int, int]], width: int) -> Image.Image:
    """One row per run (wrapped to ``width``): a colour swatch and the run's name."""
    entries = [(label, text_width(label) + 34) for label in labels]
    rows, row, used = [], [], 0
    for entry in entries:
        if row and used + entry[1] > width - 8:
            rows.append(row)
            row, used = [], 0
        row.append(entry)
        used += entry[1]
    rows.append(row)
    picture = Image.new("RGB", (width, 6 + 20 * len(rows)), PAPER)
    draw = ImageDraw.Draw(picture)
    for r, row in enumerate(rows):
        x, y = 8, 4 + 20 * r
        for label, w in row:
            draw.line([(x, y + 8), (x + 22, y + 8)], fill=colours[label], width=4)
            draw.text((x + 28, y + 1), label, fill=INK, font=font())
            x += w
    return picture


def check_run_labels(runs: Sequence) -> None:
    """``ConfigError`` for no runs or two runs of one label (the same folder given twice: their rows and lines
    could not be told apart)."""
    if not runs:
        raise ConfigError("report: expected at least one run, got none")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"report: expected runs of distinct labels, got {', '.join(twice)} twice",
                          hint="give each run folder once (frs report labels folders of one name by their parents)")


def _percent(series: tuple[list[float], list[float]]) -> tuple[list[float], list[float]]:
    """An evaluation series in percent, as the report's table, ``frs eval`` and papers state AP."""
    xs, ys = series
    return xs, [100 * y for y in ys]


def run_report(runs: Sequence, columns: int = 3, metric: str = "AP") -> Image.Image:
    """The report of several runs (``eval.run_log.RunLog``): val ``metric`` against epoch, then one chart per
    loss term against iteration (log scale; the total ``loss`` last), every run in its own colour throughout.
    ``ConfigError`` for no runs or two runs of the same name (their lines could not be told apart)."""
    check_run_labels(runs)
    names = [r.name for r in runs]
    colours = {name: colour_of(i) for i, name in enumerate(names)}
    terms: dict[str, None] = {}
    for r in runs:
        terms.update(dict.fromkeys(t for t in r.terms if t != "loss"))
    charts = [line_chart([(r.name, *_percent(r.eval_series(metric))) for r in runs], f"val {metric} (COCO, %)",
                         "epoch", colours, markers=True)]
    for term in [*terms, "loss"]:
        charts.append(line_chart([(r.name, *r.series(term)) for r in runs], term, "iteration", colours, log_y=True))
    cols = min(columns, len(charts))
    rows = -(-len(charts) // cols)
    width = cols * CHART_W
    key = legend(names, colours, width)
    canvas = Image.new("RGB", (width, key.height + rows * CHART_H), PAPER)
    canvas.paste(key, (0, 0))
    for i, chart in enumerate(charts):
        canvas.paste(chart, ((i % cols) * CHART_W, key.height + (i // cols) * CHART_H))
    return canvas
