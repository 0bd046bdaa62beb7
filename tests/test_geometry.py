"""The shared view geometry: resize rule, padding, box and image mapping, flips, level grids, batching."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from frs_cli.data.geometry import (
    GeometryConfig,
    ViewGeometry,
    batch_padded_size,
    canonical_view,
    compute_geometry,
    level_grid_size,
    level_valid_size,
    parse_view,
    resized_size,
    view_geometry,
    view_name,
)
from frs_cli.data.transforms import apply_to_boxes, apply_to_image, invert_boxes, pad_batch
from frs_cli.errors import ConfigError

COCO = GeometryConfig(min_size=800, max_size=1333, size_divisible=32)


# ------------------------------------------------------------------------------------------- resize rule


def test_resized_size_short_side_to_min_size_480x640():
    # scale = min(800 / 480, 1333 / 640) = min(1.667, 2.083) = 1.667; 640 * 800 / 480 = 1066.67 -> 1067
    assert resized_size(480, 640, COCO) == (800, 1067)
    assert resized_size(640, 480, COCO) == (1067, 800)


def test_resized_size_long_side_capped_by_max_size():
    # 100 x 1000: short-side scale 8 would make the long side 8000 > 1333, so scale = 1333 / 1000
    # -> height 100 * 1.333 = 133.3 -> 133, width 1333
    assert resized_size(100, 1000, COCO) == (133, 1333)
    assert resized_size(1000, 100, COCO) == (1333, 133)
    # 300 x 400 with 800 / 1000: min(800 / 300 = 2.667, 1000 / 400 = 2.5) = 2.5 -> 750 x 1000
    assert resized_size(300, 400, GeometryConfig(min_size=800, max_size=1000)) == (750, 1000)


def test_resized_size_identity_and_downscale():
    assert resized_size(800, 800, COCO) == (800, 800)
    assert resized_size(800, 1200, COCO) == (800, 1200)
    # 1600 x 2000: min(800 / 1600 = 0.5, 1333 / 2000 = 0.6665) = 0.5 -> 800 x 1000
    assert resized_size(1600, 2000, COCO) == (800, 1000)


def test_resized_size_follows_rule_for_many_sizes():
    for h in range(10, 2000, 97):
        for w in range(10, 2000, 113):
            rh, rw = resized_size(h, w, COCO)
            scale = min(800 / min(h, w), 1333 / max(h, w))
            assert (rh, rw) == (max(1, min(round(h * scale), 1333)), max(1, min(round(w * scale), 1333)))
            # either the short side reaches min_size or the long side reaches max_size
            assert min(rh, rw) == 800 or max(rh, rw) == 1333
            assert max(rh, rw) <= 1333


def test_resized_size_rejects_non_positive_image_size():
    with pytest.raises(ConfigError, match="expected positive height and width, got 0x5"):
        resized_size(0, 5, COCO)
    with pytest.raises(ConfigError, match="got 5x-1"):
        resized_size(5, -1, COCO)


def test_compute_geometry_pads_to_next_multiple_of_size_divisible():
    g = compute_geometry(480, 640, COCO)
    # 800 is 25 * 32; 1067 / 32 = 33.3 -> 34 * 32 = 1088
    assert (g.orig_h, g.orig_w) == (480, 640)
    assert (g.resized_h, g.resized_w) == (800, 1067)
    assert (g.padded_h, g.padded_w) == (800, 1088)
    assert g.hflip is False
    g = compute_geometry(100, 1000, COCO, hflip=True)
    # 133 -> 5 * 32 = 160; 1333 -> 42 * 32 = 1344
    assert (g.resized_h, g.resized_w, g.padded_h, g.padded_w) == (133, 1333, 160, 1344)
    assert g.hflip is True
    assert g.view == "hflip"
    assert g.valid_size == (133, 1333)
    assert g.padded_size == (160, 1344)


def test_compute_geometry_padding_for_various_divisors():
    for d in (1, 7, 32, 128):
        cfg = GeometryConfig(min_size=200, max_size=300, size_divisible=d)
        for h, w in [(50, 70), (64, 64), (31, 97)]:
            g = compute_geometry(h, w, cfg)
            for valid, padded in ((g.resized_h, g.padded_h), (g.resized_w, g.padded_w)):
                assert padded % d == 0
                assert valid <= padded < valid + d


def test_view_geometry_names_views_and_rejects_unknown():
    assert view_geometry(30, 40, COCO, "orig").hflip is False
    assert view_geometry(30, 40, COCO, "hflip").hflip is True
    for bad in ("vflip", "hflip@", "hflip@0", "hflip@-640", "hflip@0640", "hflip@6.4e2", "orig@640@800", "@640"):
        with pytest.raises(ConfigError, match=f"view: expected orig or hflip, optionally with a short side in px "
                                              f"after '@' \\(e.g. hflip@640\\), got '{re.escape(bad)}'"):
            view_geometry(30, 40, COCO, bad)


def test_a_view_at_another_short_side_is_that_resize_and_has_one_spelling():
    """Multi-scale views (the paper's FCOS: short side 640 or 800, long side at most 1333): ``hflip@640`` is the
    geometry with min_size 640 and the flip; at the geometry's own short side the plain name is the one spelling."""
    g = view_geometry(480, 640, COCO, "hflip@640")
    assert (g.resized_h, g.resized_w, g.padded_h, g.padded_w, g.hflip) == (640, 853, 640, 864, True)
    assert g == compute_geometry(480, 640, GeometryConfig(min_size=640, max_size=1333), hflip=True)
    wide = view_geometry(200, 1000, COCO, "orig@640")  # the long side's bound still holds: 1333 / 1000
    assert (wide.resized_h, wide.resized_w) == (267, 1333)
    assert view_geometry(480, 640, COCO, "orig@800") == view_geometry(480, 640, COCO, "orig")
    assert parse_view("hflip@640") == ("hflip", 640) and parse_view("orig") == ("orig", None)
    assert [canonical_view(v, COCO) for v in ("orig@800", "hflip@640", "hflip")] == ["orig", "hflip@640", "hflip"]
    assert view_name("orig", 640, COCO) == "orig@640" and view_name("hflip", 800, COCO) == "hflip"
    with pytest.raises(ConfigError, match=r"view 'orig@1400': expected a short side of at most geometry.max_size "
                                          r"\(1333\), got 1400"):
        view_geometry(480, 640, COCO, "orig@1400")


# ---------------------------------------------------------------------------------------------- boxes


def test_apply_to_boxes_scales_exactly_under_resize():
    g = compute_geometry(30, 40, GeometryConfig(min_size=60, max_size=100))  # scale 2 -> 60 x 80
    assert (g.resized_h, g.resized_w) == (60, 80)
    boxes = torch.tensor([[4.0, 3.0, 10.0, 12.0], [0.0, 0.0, 40.0, 30.0]])
    out = apply_to_boxes(boxes, g)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[8.0, 6.0, 20.0, 24.0], [0.0, 0.0, 80.0, 60.0]]))


def test_apply_to_boxes_uses_separate_x_and_y_scales():
    g = compute_geometry(480, 640, COCO)  # 800 x 1067: sx = 1067 / 640, sy = 800 / 480
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0]])
    sx, sy = 1067 / 640, 800 / 480
    expected = torch.tensor([[10.0 * sx, 20.0 * sy, 300.0 * sx, 400.0 * sy]])
    torch.testing.assert_close(apply_to_boxes(boxes, g), expected)


def test_apply_to_boxes_flip_maps_x_to_width_minus_x_and_swaps():
    g = compute_geometry(30, 40, GeometryConfig(min_size=60, max_size=100), hflip=True)  # 60 x 80
    boxes = torch.tensor([[4.0, 3.0, 10.0, 12.0]])
    # scaled: [8, 6, 20, 24]; flipped: x1' = 80 - 20 = 60, x2' = 80 - 8 = 72
    torch.testing.assert_close(apply_to_boxes(boxes, g), torch.tensor([[60.0, 6.0, 72.0, 24.0]]))
    out = apply_to_boxes(torch.tensor([[0.0, 0.0, 40.0, 30.0]]), g)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 80.0, 60.0]]))


def test_apply_to_boxes_flip_without_resize():
    g = compute_geometry(30, 40, GeometryConfig(min_size=30, max_size=40), hflip=True)
    assert (g.resized_h, g.resized_w) == (30, 40)
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0], [33.5, 0.0, 40.0, 30.0]])
    expected = torch.tensor([[40 - 5.0, 2.0, 40 - 1.0, 9.0], [40 - 40.0, 0.0, 40 - 33.5, 30.0]])
    torch.testing.assert_close(apply_to_boxes(boxes, g), expected)


def test_apply_to_boxes_empty_gives_0x4():
    out = apply_to_boxes(torch.zeros(0, 4), compute_geometry(30, 40, COCO, hflip=True))
    assert out.shape == (0, 4)


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("size", [(480, 640), (333, 500), (100, 1000), (800, 800)])
def test_invert_boxes_undoes_apply_to_boxes(size, hflip):
    h, w = size
    g = compute_geometry(h, w, COCO, hflip=hflip)
    gen = torch.Generator().manual_seed(h * 7 + w + hflip)
    xy1 = torch.rand(50, 2, generator=gen) * torch.tensor([w, h]) * 0.8
    wh = torch.rand(50, 2, generator=gen) * torch.tensor([w, h]) * 0.2 + 0.5
    boxes = torch.cat([xy1, xy1 + wh], dim=1).float()
    back = invert_boxes(apply_to_boxes(boxes, g), g)
    assert back.dtype == torch.float32
    if not hflip:
        torch.testing.assert_close(back, boxes)
    else:
        # a flip stores resized_w - x in float32, so a small x keeps only the absolute precision of a number
        # near resized_w (half an ulp, ~6e-5 px at 1067): allow a few float32 ulps of the image width
        atol = 4 * torch.finfo(torch.float32).eps * max(h, w)
        torch.testing.assert_close(back, boxes, rtol=1.3e-6, atol=atol)
        assert atol < 1e-3  # still far below a pixel


# ---------------------------------------------------------------------------------------------- images


def _random_image(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_apply_to_image_returns_resized_uint8():
    img = _random_image(30, 40)
    for hflip in (False, True):
        g = compute_geometry(30, 40, GeometryConfig(min_size=45, max_size=100), hflip=hflip)
        out = apply_to_image(img, g)
        assert out.dtype == torch.uint8
        assert tuple(out.shape) == (3, g.resized_h, g.resized_w) == (3, 45, 60)


def test_apply_to_image_is_identity_without_resize_or_flip():
    img = _random_image(30, 40)
    g = compute_geometry(30, 40, GeometryConfig(min_size=30, max_size=40))
    assert (g.resized_h, g.resized_w, g.hflip) == (30, 40, False)
    assert torch.equal(apply_to_image(img, g), img)


def test_apply_to_image_flip_reverses_columns():
    img = _random_image(30, 40, seed=1)
    g = compute_geometry(30, 40, GeometryConfig(min_size=30, max_size=40), hflip=True)
    out = apply_to_image(img, g)
    assert torch.equal(out[:, :, -1], img[:, :, 0])  # image column 0 becomes the last column
    assert torch.equal(out[:, :, 0], img[:, :, -1])
    for c in range(40):
        assert torch.equal(out[:, :, c], img[:, :, 39 - c])


def test_apply_to_image_keeps_constant_colour_under_resize():
    img = torch.empty(3, 30, 40, dtype=torch.uint8)
    img[0], img[1], img[2] = 10, 200, 77
    g = compute_geometry(30, 40, GeometryConfig(min_size=47, max_size=100), hflip=True)
    out = apply_to_image(img, g)
    assert torch.equal(out[0], torch.full((g.resized_h, g.resized_w), 10, dtype=torch.uint8))
    assert torch.equal(out[1], torch.full((g.resized_h, g.resized_w), 200, dtype=torch.uint8))
    assert torch.equal(out[2], torch.full((g.resized_h, g.resized_w), 77, dtype=torch.uint8))


@pytest.mark.parametrize("hflip", [False, True])
def test_white_block_lands_where_its_mapped_box_says(hflip):
    # a white block over pixels x in [4, 12), y in [8, 16) of a black 32 x 48 image, resized by exactly 2
    img = torch.zeros(3, 32, 48, dtype=torch.uint8)
    img[:, 8:16, 4:12] = 255
    g = compute_geometry(32, 48, GeometryConfig(min_size=64, max_size=96), hflip=hflip)
    assert (g.resized_h, g.resized_w) == (64, 96)
    out = apply_to_image(img, g)
    (x1, y1, x2, y2) = apply_to_boxes(torch.tensor([[4.0, 8.0, 12.0, 16.0]]), g)[0].tolist()
    # by hand: scaled [8, 16, 24, 32]; flipped: x -> 96 - x -> [72, 16, 88, 32]
    assert (x1, y1, x2, y2) == ((72.0, 16.0, 88.0, 32.0) if hflip else (8.0, 16.0, 24.0, 32.0))
    for r in range(64):
        for c in range(96):
            cx, cy = c + 0.5, r + 0.5
            inside = x1 + 1 <= cx <= x2 - 1 and y1 + 1 <= cy <= y2 - 1
            outside = cx <= x1 - 1 or cx >= x2 + 1 or cy <= y1 - 1 or cy >= y2 + 1
            if inside:
                assert out[:, r, c].tolist() == [255, 255, 255], (r, c)
            elif outside:
                assert out[:, r, c].tolist() == [0, 0, 0], (r, c)


def test_apply_to_image_rejects_image_of_another_size():
    g = compute_geometry(30, 40, COCO)
    with pytest.raises(ConfigError, match="expected 30x40 as recorded, got 31x40"):
        apply_to_image(_random_image(31, 40), g)


# ------------------------------------------------------------------------------------------ ViewGeometry


def test_view_geometry_row_round_trip():
    for hflip in (False, True):
        g = compute_geometry(480, 640, COCO, hflip=hflip)
        row = g.to_row()
        assert row == [480, 640, 800, 1067, 800, 1088, int(hflip)]
        assert all(type(v) is int for v in row)
        back = ViewGeometry.from_row(row)
        assert back == g
        assert back.hflip is hflip
        assert ViewGeometry.from_row(torch.tensor(row)) == g


def test_view_geometry_scales_and_dict():
    g = compute_geometry(480, 640, COCO)
    assert g.scale_y == 800 / 480
    assert g.scale_x == 1067 / 640
    assert g.view == "orig"
    assert g.to_dict() == {"orig_h": 480, "orig_w": 640, "resized_h": 800, "resized_w": 1067, "padded_h": 800,
                          "padded_w": 1088, "hflip": False}


# ----------------------------------------------------------------------------------------- GeometryConfig


@pytest.mark.parametrize("field", ["min_size", "max_size", "size_divisible"])
@pytest.mark.parametrize("value", [0, -3, True, 1.5, "800"])
def test_geometry_config_rejects_bad_values_naming_field(field, value):
    kwargs = {"min_size": 10, "max_size": 20, "size_divisible": 4}
    kwargs[field] = value
    with pytest.raises(ConfigError, match=f"recipe key 'geometry\\.{field}': expected a positive integer"):
        GeometryConfig(**kwargs)


def test_geometry_config_rejects_max_size_below_min_size():
    with pytest.raises(ConfigError, match=r"recipe key 'geometry\.max_size': expected at least min_size \(800\), got 799"):
        GeometryConfig(min_size=800, max_size=799)
    assert GeometryConfig(min_size=800, max_size=800).max_size == 800


def test_geometry_config_defaults_and_to_dict():
    cfg = GeometryConfig()
    assert cfg.to_dict() == {"min_size": 800, "max_size": 1333, "size_divisible": 32}


# ------------------------------------------------------------------------------------------- level grids


def test_level_grid_size_is_ceil_halving():
    for h in range(1, 70):
        for k in range(6):
            expect_h, expect_w = h, h + 3
            for _ in range(k):
                expect_h, expect_w = math.ceil(expect_h / 2), math.ceil(expect_w / 2)
            assert level_grid_size((h, h + 3), k) == (expect_h, expect_w)
    # by hand: 800 x 1088 halved 3 times -> 100 x 136; 7 times -> 7 x 9 (800/128 = 6.25, 1088/128 = 8.5)
    assert level_grid_size((800, 1088), 3) == (100, 136)
    assert level_grid_size((800, 1088), 7) == (7, 9)
    assert level_grid_size((5, 5), 0) == (5, 5)


def test_level_grid_size_matches_stride2_conv_outputs():
    weight = torch.ones(1, 1, 3, 3)
    for h, w in [(1, 1), (2, 3), (7, 8), (13, 13), (33, 50), (64, 65), (99, 128)]:
        x = torch.zeros(1, 1, h, w)
        for k in range(1, 6):
            x = F.conv2d(x, weight, stride=2, padding=1)
            assert level_grid_size((h, w), k) == tuple(x.shape[-2:]), (h, w, k)


def test_level_valid_size():
    # 100 / 8 = 12.5 -> 13, 130 / 8 = 16.25 -> 17
    assert level_valid_size((100, 130), 8, (13, 17)) == (13, 17)
    # exact multiples: 64 / 32 = 2, 96 / 32 = 3
    assert level_valid_size((64, 96), 32, (4, 4)) == (2, 3)
    # capped by the level grid: ceil(100 / 32) = 4 > 3
    assert level_valid_size((100, 130), 32, (3, 5)) == (3, 5)
    assert level_valid_size((1, 1), 128, (1, 1)) == (1, 1)


# ----------------------------------------------------------------------------------------------- batching


def test_pad_batch_zero_pads_bottom_right_and_keeps_content():
    a = _random_image(2, 3, seed=2)
    b = _random_image(4, 2, seed=3)
    out = pad_batch([a, b], (4, 5))
    assert out.shape == (2, 3, 4, 5)
    assert out.dtype == torch.uint8
    for i, img in enumerate((a, b)):
        h, w = img.shape[-2:]
        for c in range(3):
            for r in range(4):
                for col in range(5):
                    expected = int(img[c, r, col]) if r < h and col < w else 0
                    assert int(out[i, c, r, col]) == expected


def test_pad_batch_keeps_float_dtype():
    x = torch.randn(3, 2, 2)
    out = pad_batch([x], (3, 4))
    assert out.dtype == torch.float32
    assert torch.equal(out[0, :, :2, :2], x)
    assert torch.equal(out[0, :, 2:, :], torch.zeros(3, 1, 4))
    assert torch.equal(out[0, :, :, 2:], torch.zeros(3, 3, 2))


def test_batch_padded_size_is_max_of_padded_sizes():
    g1 = compute_geometry(480, 640, COCO)  # padded 800 x 1088
    g2 = compute_geometry(100, 1000, COCO)  # padded 160 x 1344
    assert batch_padded_size([g1, g2]) == (800, 1344)
    assert batch_padded_size([g1, g2], size_divisible=128) == (896, 1408)
