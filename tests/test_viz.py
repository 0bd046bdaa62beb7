"""FRS mask pictures: sizes, where the heat goes, one colour scale, box outlines, input checks, PNG writing."""

import numpy as np
import pytest
import torch
from PIL import Image

from frs_cli.errors import ConfigError
from frs_cli.viz import masks as masks_module
from frs_cli.viz.draw import FONT_PX, TICK_PX, colour_bar, format_value, text_width
from frs_cli.viz.masks import (
    BOX_COLOUR,
    BOX_WIDTH_PX,
    HEADER_PX,
    HEAT_ALPHA,
    PANEL_GAP_PX,
    ROW_LABEL_PX,
    TITLE_BAND_PX,
    grey_image,
    heat_colours,
    heatmap_overlay,
    level_panels,
    mask_figure,
    save_png,
)

H, W = 40, 56  # not a multiple of 8 or 16: the masks' padded grids run past the image


def make_image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(60, 200, (3, H, W), dtype=torch.uint8, generator=g)


def grid(stride):
    return (-(-48 // stride), -(-64 // stride))  # the view padded to 48 x 64


def pixels(picture):
    return np.asarray(picture, dtype=np.float64)


def test_panel_size_follows_the_rule():
    image, mask = make_image(), torch.rand(*grid(8))
    assert heatmap_overlay(image, mask, 8).size == (W, H)
    assert heatmap_overlay(image, mask, 8, title="P3").size == (W, H + TITLE_BAND_PX)
    assert heatmap_overlay(image, mask, 8, title="P3", scale=3).size == (W * 3, H * 3 + TITLE_BAND_PX)
    wide = "P3  stride 8  max 0.99"  # wider than the 56 px picture: the panel takes the title's width
    assert text_width(wide) + 8 > W
    assert heatmap_overlay(image, mask, 8, title=wide).size == (text_width(wide) + 8, H + TITLE_BAND_PX)


def panel_width(picture_w, masks, strides, names, vmax):
    """A figure's panel width: the picture's, or its widest title's where that is wider."""
    titles = [f"{n}  stride {s}  max {format_value(float(m.max()), vmax)}" for m, s, n in zip(masks, strides, names)]
    return max(picture_w, *(text_width(t) + 8 for t in titles))


def bar_width(vmax, height):
    return colour_bar(height, vmax, "mask S").width


def test_figure_size_is_panels_plus_gaps_plus_colour_bar():
    strides = [8, 16, 32]
    masks = [torch.rand(*grid(s)) for s in strides]
    picture = level_panels(make_image(), masks, strides, ["P3", "P4", "P5"], scale=2)
    body_h = H * 2 + TITLE_BAND_PX
    vmax = max(float(m.max()) for m in masks)
    pw = panel_width(W * 2, masks, strides, ["P3", "P4", "P5"], vmax)
    assert pw > W * 2  # the titles (134 px) are wider than the 112 px pictures: the panels take their width
    assert picture.size == (3 * pw + 3 * PANEL_GAP_PX + bar_width(vmax, body_h), HEADER_PX + body_h)
    two = mask_figure(make_image(), [("a", masks), ("b", masks)], strides, ["P3", "P4", "P5"], scale=2)
    body_h = 2 * (ROW_LABEL_PX + H * 2 + TITLE_BAND_PX) + PANEL_GAP_PX
    assert two.size == (3 * pw + 3 * PANEL_GAP_PX + bar_width(vmax, body_h), HEADER_PX + body_h)
    narrow = level_panels(make_image(), masks, strides, ["P3", "P4", "P5"], scale=1)  # 56 px: the titles widen
    pw = panel_width(W, masks, strides, ["P3", "P4", "P5"], vmax)
    assert pw > W and narrow.size[0] == 3 * pw + 3 * PANEL_GAP_PX + bar_width(vmax, H + TITLE_BAND_PX)


def test_a_header_too_long_for_the_figure_takes_two_lines_and_widens_it_so_no_word_is_cut():
    title = "FRS mask, image 123456 (orig@800)"
    picture = level_panels(make_image(), [torch.rand(*grid(8)) * 0.5], [8], ["P3"], scale=1, title=title)
    body_h = H + TITLE_BAND_PX
    scale_line = f"colour: 0 to {format_value(0.5, 0.5)}, one scale for all panels"
    assert picture.size[1] == 2 * HEADER_PX + body_h  # title, then the colour scale, each on its own band
    assert picture.size[0] >= max(text_width(title), text_width(scale_line)) + 8 > W + PANEL_GAP_PX + bar_width(0.5, body_h)
    header = pixels(picture)[:2 * HEADER_PX]
    text_columns = np.flatnonzero((header > 150).any(axis=(0, 2)))  # light text on the dark band
    assert text_columns.max() < picture.size[0] - 3  # the last letter inside the band, not cut at its edge
    lines = [pixels(picture)[i * HEADER_PX:(i + 1) * HEADER_PX] for i in (0, 1)]
    widths = [np.flatnonzero((line > 150).any(axis=(0, 2))).max() for line in lines]
    assert abs(widths[0] - text_width(title)) <= 6 and abs(widths[1] - text_width(scale_line)) <= 6


def cell_mean(picture, r, c, stride, top=0):
    out = pixels(picture).mean(axis=2)
    return out[top + r * stride: top + (r + 1) * stride, c * stride:(c + 1) * stride].mean()


def test_a_weak_mask_is_visible_where_high_and_dark_where_low():
    """A trained-but-weak teacher's mask peaks near 0.25: the picture must still show where."""
    stride, (r, c) = 8, (2, 3)
    mask = torch.zeros(*grid(stride))
    mask[r, c] = 0.25
    mask[0, 0] = 0.05
    out = pixels(heatmap_overlay(make_image(), mask, stride)).mean(axis=2)  # (H, W) intensity
    full_rows, full_cols = H // stride, W // stride  # cells lying wholly inside the image
    cells = out[: full_rows * stride, : full_cols * stride].reshape(full_rows, stride, full_cols, stride)
    cells = cells.mean(axis=(1, 3))
    assert np.unravel_index(cells.argmax(), cells.shape) == (r, c)
    hot, low, zero = cells[r, c], cells[0, 0], cells[-1, 0]
    # hot: 0.7 * the ramp's top colour (~224) + 0.3 * grey (~100..130): about 190; zero: 0.3 * grey: about 35
    assert hot > zero + 120, (hot, zero)
    assert zero < low < hot  # a value between shows between
    hot_rgb = pixels(heatmap_overlay(make_image(), mask, stride))[r * stride + 4, c * stride + 4]
    assert hot_rgb[0] > 200 and hot_rgb[1] > 200  # pale yellow, the top of the ramp


def test_one_colour_scale_across_levels():
    """P4's peak is half P3's: drawn on P3's scale it is darker, not as bright as P3 (per-panel scaling would)."""
    m3, m4 = torch.zeros(*grid(8)), torch.zeros(*grid(16))
    m3[1, 1], m4[1, 1] = 0.4, 0.2
    image = torch.full((3, H, W), 128, dtype=torch.uint8)
    picture = level_panels(image, [m3, m4], [8, 16], ["P3", "P4"])
    top = picture.size[1] - H  # under the header (two lines: the figure is narrow) and the panels' titles
    p3 = cell_mean(picture, 1, 1, 8, top)
    p4_left = panel_width(W, [m3, m4], [8, 16], ["P3", "P4"], 0.4) + PANEL_GAP_PX
    out = pixels(picture).mean(axis=2)
    p4 = out[top + 16: top + 32, p4_left + 16: p4_left + 32].mean()
    expected = lambda v: (np.asarray(heat_colours(torch.tensor(v))).mean() * HEAT_ALPHA
                          + float(grey_image(image)[0, 0, 0]) * (1 - HEAT_ALPHA))
    assert p3 == pytest.approx(expected(1.0), abs=1.5)  # 0.4 is the figure's top: the ramp's brightest
    assert p4 == pytest.approx(expected(0.5), abs=1.5)  # 0.2 is half way up the same scale
    assert p3 > p4 + 40
    fixed = level_panels(image, [m3, m4], [8, 16], ["P3", "P4"], vmax=1.0)
    assert cell_mean(fixed, 1, 1, 8, top) == pytest.approx(expected(0.4), abs=1.5)  # --vmax 1: absolute scale


def test_the_scale_and_each_panel_are_written_on_the_picture(monkeypatch):
    texts = []
    real = masks_module.title_band
    monkeypatch.setattr(masks_module, "title_band", lambda w, text, h, **kw: texts.append(text) or real(w, text, h, **kw))
    m3, m4 = torch.zeros(*grid(8)), torch.zeros(*grid(16))
    m3[0, 0], m4[0, 0] = 0.26, 0.031
    rows = [("teacher A", [m3, m4]), ("teacher B", [m3 / 2, m4])]
    mask_figure(make_image(), rows, [8, 16], ["P3", "P4"], title="FRS mask, image 7 (orig)")
    assert texts[-2:] == ["FRS mask, image 7 (orig)", "colour: 0 to 0.26, one scale for all panels"]  # too narrow for one
    assert "P3  stride 8  max 0.26" in texts and "P4  stride 16  max 0.03" in texts
    assert "P3  stride 8  max 0.13" in texts and "teacher A" in texts and "teacher B" in texts
    texts.clear()
    level_panels(make_image(), [m4], [16], ["P4"])
    assert texts[-1].endswith("colour: 0 to 0.031, one scale for all panels")  # 3 decimals for a weak mask


def test_a_colour_bar_tick_stands_apart_from_its_number_so_it_does_not_read_as_a_minus_sign():
    bar_px = 16
    picture = pixels(colour_bar(200, 0.39, "mask S", bar_px=bar_px)).max(axis=2)
    top_pad, inner = FONT_PX + 8, 200 - (FONT_PX + 8) - (FONT_PX // 2 + 2)
    for frac in (0.0, 0.5, 1.0):
        y = top_pad + round((1.0 - frac) * (inner - 1))
        band = picture[max(0, y - FONT_PX // 2): y + FONT_PX // 2 + 1, 3 + bar_px:]  # right of the ramp
        lit = np.flatnonzero((band > 150).any(axis=0))
        tick_end = lit[0] + TICK_PX - 1
        assert list(lit[:TICK_PX]) == list(range(TICK_PX)), lit[:8]  # the tick, from the ramp's edge
        text_start = lit[lit > tick_end][0]
        assert text_start - tick_end - 1 >= 4, (frac, lit[:12])  # at least 4 dark columns between tick and number


def test_colour_bar_runs_from_the_ramps_bottom_to_its_top():
    bar = pixels(colour_bar(200, 0.5, "mask S"))
    column = bar[:, 3 + 8]  # the middle of the bar
    top_row, bottom_row = FONT_PX + 8, 200 - (FONT_PX // 2 + 2) - 1  # below the label, above the last tick text
    assert column[top_row] == pytest.approx(heat_colours(torch.tensor(1.0)).numpy(), abs=1)  # vmax at the top
    assert column[bottom_row] == pytest.approx(heat_colours(torch.tensor(0.0)).numpy(), abs=1)  # 0 at the bottom
    luminance = column[top_row: bottom_row + 1].mean(axis=1)
    assert np.all(np.diff(luminance) <= 1.0)  # darker all the way down


def test_zero_mask_shows_the_greyed_image_under_the_ramps_darkest_colour():
    image = make_image()
    out = pixels(heatmap_overlay(image, torch.zeros(*grid(8)), 8))
    expected = (grey_image(image) * (1 - HEAT_ALPHA) + heat_colours(torch.zeros(H, W)) * HEAT_ALPHA)
    expected = expected.round().permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() <= 1.0
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 1.0  # grey: the image's own colours are gone


def test_box_outline_takes_the_box_colour():
    box = torch.tensor([[10.0, 8.0, 30.0, 24.0]])
    mask = torch.rand(*grid(8))
    out = pixels(heatmap_overlay(make_image(), mask, 8, boxes_xyxy=box))
    for y, x in [(8, 10), (8 + BOX_WIDTH_PX - 1, 20), (23, 29), (16, 10)]:
        assert tuple(out[y, x]) == BOX_COLOUR, (y, x)
    assert tuple(out[16, 20]) != BOX_COLOUR  # inside the box, not on the outline
    # enlarged and titled: the picture sits below the band, box corners scale with it
    out = pixels(heatmap_overlay(make_image(), mask, 8, boxes_xyxy=box, title="t", scale=2))
    assert tuple(out[TITLE_BAND_PX + 16, 20]) == BOX_COLOUR
    assert tuple(out[TITLE_BAND_PX + 47, 59]) == BOX_COLOUR


def test_heat_ramp_brightens_monotonically():
    rgb = heat_colours(torch.linspace(0, 1, 101))  # (3, 101)
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    assert torch.all(luminance[1:] >= luminance[:-1])
    assert luminance[0] < 10 and luminance[-1] > 240


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": torch.zeros(3, H, W)}, r"image: expected a \(3, H, W\) uint8"),
        ({"image": torch.zeros(4, H, W, dtype=torch.uint8)}, r"image: expected a \(3, H, W\) uint8"),
        ({"mask": torch.zeros(1, 6, 8)}, "mask: expected a 2-D"),
        ({"mask": torch.full((6, 8), 1.5)}, r"values in \[0, 1\], got range \[1\.5, 1\.5\]"),
        ({"mask": torch.full((6, 8), -0.2)}, r"values in \[0, 1\]"),
        ({"mask": torch.zeros(4, 8)}, "to cover the 40x56 image"),
        ({"mask": torch.zeros(6, 8), "stride": 64}, "wrong stride"),
        ({"stride": 0}, "stride: expected a positive integer"),
        ({"alpha": 1.5}, r"alpha: expected a number in \[0, 1\]"),
        ({"boxes_xyxy": torch.zeros(4)}, r"boxes_xyxy: expected an \(N, 4\)"),
        ({"scale": 0}, "scale: expected a positive integer"),
        ({"vmax": 0.0}, "vmax: expected a positive number"),
    ],
)
def test_bad_overlay_inputs_raise_config_error(kwargs, message):
    args = {"image": make_image(), "mask": torch.zeros(6, 8), "stride": 8} | kwargs
    with pytest.raises(ConfigError, match=message):
        heatmap_overlay(**args)


def test_mask_rounding_just_past_one_is_accepted():
    mask = torch.full((6, 8), 1.0 + 1e-5)
    assert heatmap_overlay(make_image(), mask, 8).size == (W, H)


def test_level_panels_rejects_mismatched_lengths():
    with pytest.raises(ConfigError, match="as many masks, strides and names, got 2, 1 and 2"):
        level_panels(make_image(), [torch.zeros(6, 8), torch.zeros(3, 4)], [8], ["P3", "P4"])
    with pytest.raises(ConfigError, match="at least one level"):
        level_panels(make_image(), [], [], [])
    with pytest.raises(ConfigError, match="one mask per level \\(2\\) in row 'b', got 1"):
        mask_figure(make_image(), [("a", [torch.zeros(6, 8), torch.zeros(3, 4)]), ("b", [torch.zeros(6, 8)])],
                    [8, 16], ["P3", "P4"])


def test_save_png_writes_a_png_pil_can_reopen(tmp_path):
    picture = heatmap_overlay(make_image(), torch.rand(6, 8), 8, title="P3")
    path = tmp_path / "figs" / "p3.png"
    save_png(picture, path)
    with Image.open(path) as reopened:
        assert reopened.format == "PNG" and reopened.size == picture.size
    assert [p.name for p in path.parent.iterdir()] == ["p3.png"]  # no temp file left behind


def test_save_png_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="expected a PIL image"):
        save_png(np.zeros((4, 4, 3)), tmp_path / "x.png")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"expected a folder at '.*file' to hold '.*file/x.png', got a file"):
        save_png(Image.new("RGB", (4, 4)), blocker / "x.png")


def test_a_cached_view_is_enlarged_to_min_height_but_no_panel_wider_than_max_panel_px(cache_path, monkeypatch):
    """The 64 x 64 views: min_height 256 enlarges 4 times; with MAX_PANEL_PX 128 (a long strip's case) twice."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.viz import cache_view

    cache = TeacherCache(cache_path)
    full = cache_view.render_cached_view(cache, cache.dataset(), level="P3", min_height=256)
    monkeypatch.setattr(cache_view, "MAX_PANEL_PX", 128)
    capped = cache_view.render_cached_view(cache, cache.dataset(), level="P3", min_height=256)
    assert full.height - capped.height == 256 - 128  # one panel row: the image rows at scale 4 against 2
    monkeypatch.setattr(cache_view, "MAX_PANEL_PX", 10)  # narrower than the view: never below scale 1
    assert full.height - cache_view.render_cached_view(cache, cache.dataset(), level="P3", min_height=256).height \
        == 256 - 64


def test_compare_refuses_a_cache_of_another_dataset(cache_path, tmp_path):
    """Its image of the same id is another picture: its masks are not drawn on this one (one line, no file)."""
    import shutil

    import zarr
    from conftest import assert_one_line_error
    from typer.testing import CliRunner

    from frs_cli.cli.app import app

    other = tmp_path / "other.zarr"
    shutil.copytree(cache_path, other)
    group = zarr.open_group(str(other), mode="r+")
    group.attrs["fingerprints"] = {**group.attrs["fingerprints"], "dataset": "0123456789abcdef"}
    out = tmp_path / "cmp.png"
    result = CliRunner().invoke(app, ["visualize", "--cache", cache_path, "--compare", str(other), "--out", str(out)])
    assert_one_line_error(result, "--compare: expected a cache of the same dataset as", "(0123456789abcdef)")
    assert not out.exists()
    same = CliRunner().invoke(app, ["visualize", "--cache", cache_path, "--compare", cache_path, "--out", str(out)])
    assert same.exit_code == 0 and out.is_file()


def test_level_all_and_level_names_are_read_in_any_case():
    from frs_cli.viz.cache_view import resolve_levels

    names = ["P3", "P4", "P5", "P6", "P7"]
    assert resolve_levels("ALL", names) == resolve_levels("all", names) == [0, 1, 2, 3, 4]
    assert resolve_levels("p4", names) == resolve_levels("P4", names) == resolve_levels("4", names) == [1]
    with pytest.raises(ConfigError, match=r"^--level: expected 'all' or one of P3, P4, P5, P6, P7, got 'P9'$"):
        resolve_levels("P9", names)
