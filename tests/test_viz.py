"""FRS mask pictures: sizes, where the heat goes, box outlines, input checks, PNG writing."""

import numpy as np
import pytest
import torch
from PIL import Image

from frs_cli.errors import ConfigError
from frs_cli.viz.masks import (
    BOX_COLOUR,
    BOX_WIDTH_PX,
    PANEL_GAP_PX,
    TITLE_BAND_PX,
    heat_colours,
    heatmap_overlay,
    level_panels,
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
    assert heatmap_overlay(image, mask, 8, title="P3  stride 8").size == (W, H + TITLE_BAND_PX)
    assert heatmap_overlay(image, mask, 8, title="P3", scale=3).size == (W * 3, H * 3 + TITLE_BAND_PX)


def test_level_panels_width_is_panels_plus_gaps():
    strides = [8, 16, 32]
    masks = [torch.rand(*grid(s)) for s in strides]
    picture = level_panels(make_image(), masks, strides, ["P3", "P4", "P5"], scale=2)
    assert picture.size == (3 * W * 2 + 2 * PANEL_GAP_PX, H * 2 + TITLE_BAND_PX)


def test_hot_cell_is_the_brightest_region():
    stride, (r, c) = 8, (2, 3)
    mask = torch.zeros(*grid(stride))
    mask[r, c] = 1.0
    out = pixels(heatmap_overlay(make_image(), mask, stride)).mean(axis=2)  # (H, W) intensity
    full_rows, full_cols = H // stride, W // stride  # cells lying wholly inside the image
    cell_means = out[: full_rows * stride, : full_cols * stride].reshape(full_rows, stride, full_cols, stride)
    cell_means = cell_means.mean(axis=(1, 3))
    assert np.unravel_index(cell_means.argmax(), cell_means.shape) == (r, c)
    hot = out[r * stride:(r + 1) * stride, c * stride:(c + 1) * stride].mean()
    far = out[-stride:, :stride].mean()
    # hot = 0.45 * image + 0.55 * ~224 (the ramp's top colour): some 50 grey levels above an image of mean ~130
    assert hot > far + 30


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


def test_zero_mask_leaves_the_image_unchanged_outside_boxes():
    image = make_image()
    box = torch.tensor([[10.0, 8.0, 30.0, 24.0]])
    out = pixels(heatmap_overlay(image, torch.zeros(*grid(8)), 8, boxes_xyxy=box))
    diff = np.abs(out - image.permute(1, 2, 0).numpy().astype(np.float64))
    outline = np.zeros((H, W), dtype=bool)
    outline[8:24, 10:30] = True
    outline[8 + BOX_WIDTH_PX:24 - BOX_WIDTH_PX, 10 + BOX_WIDTH_PX:30 - BOX_WIDTH_PX] = False
    # blend weight is alpha * mask = 0: only the float -> uint8 rounding could move a value, by at most 1
    assert diff[~outline].max() <= 1.0
    assert diff[~outline].mean() < 0.01


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
    with pytest.raises(ConfigError, match="expected a writable path"):
        save_png(Image.new("RGB", (4, 4)), blocker / "x.png")
