"""COCO-format data: the annotation index, views of images, the view sampler, collation, image decoding."""

import json
import logging
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from frs_cli.cache.identity import dataset_fingerprint, file_fingerprint
from frs_cli.data.coco import CocoIndex, CocoViews, ViewSampler, collate, read_image
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig, compute_geometry
from frs_cli.data.transforms import apply_to_boxes
from frs_cli.errors import ConfigError, DataError

NO_RESIZE = GeometryConfig(min_size=30, max_size=40, size_divisible=8)  # a 30 x 40 image stays 30 x 40
DOUBLE = GeometryConfig(min_size=60, max_size=100, size_divisible=32)  # a 30 x 40 image becomes 60 x 80

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _two_colour_png(path, w=40, h=30, left=RED, right=BLUE):
    """Left half one colour, right half another, so a flip is visible."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    Image.fromarray(arr).save(path)
    return arr


def _write_json(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _doc(images, annotations, categories=None):
    return {
        "images": images,
        "annotations": annotations,
        "categories": categories if categories is not None else [{"id": 1, "name": "thing"}],
    }


def _ann(ann_id, image_id, bbox, cat=1, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd,
            "area": bbox[2] * bbox[3]}


@pytest.fixture
def dataset(tmp_path):
    """ROOT/annotations/instances_train.json and ROOT/train/*.png: three images, categories 3, 7, 11."""
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    arrays = {
        20: _two_colour_png(root / "train" / "b.png", 40, 30, RED, BLUE),
        10: _two_colour_png(root / "train" / "a.png", 40, 30, GREEN, RED),
        30: _two_colour_png(root / "train" / "c.png", 20, 50, BLUE, GREEN),
    }
    images = [  # deliberately not in id order
        {"id": 20, "file_name": "b.png", "height": 30, "width": 40},
        {"id": 10, "file_name": "a.png", "height": 30, "width": 40},
        {"id": 30, "file_name": "c.png", "height": 50, "width": 20},
    ]
    anns = [
        _ann(1, 20, [5.0, 4.0, 10.0, 6.0], cat=7),
        _ann(2, 20, [20.0, 10.0, 15.0, 15.0], cat=11),
        _ann(3, 10, [0.0, 0.0, 40.0, 30.0], cat=3),
        _ann(4, 10, [1.0, 1.0, 5.0, 5.0], cat=7, crowd=1),  # a crowd box: ignored
        _ann(5, 30, [2.0, 3.0, 4.0, 5.0], cat=11),
    ]
    cats = [{"id": 11, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    ann_file = _write_json(root / "annotations" / "instances_train.json", _doc(images, anns, cats))
    return root, ann_file, arrays


# --------------------------------------------------------------------------------------------- CocoIndex


def test_records_are_in_ascending_image_id_order(dataset):
    _, ann_file, _ = dataset
    index = CocoIndex(ann_file)
    assert index.image_ids == [10, 20, 30]
    assert [r.file_name for r in index.records] == ["a.png", "b.png", "c.png"]
    assert [(r.height, r.width) for r in index.records] == [(30, 40), (30, 40), (50, 20)]
    assert index.position == {10: 0, 20: 1, 30: 2}
    assert len(index) == 3


def test_boxes_are_converted_from_xywh_to_xyxy(dataset):
    _, ann_file, _ = dataset
    rec = CocoIndex(ann_file).records[1]  # image 20
    assert rec.boxes_xyxy.dtype == np.float32
    np.testing.assert_array_equal(rec.boxes_xyxy, np.array([[5, 4, 15, 10], [20, 10, 35, 25]], dtype=np.float32))
    np.testing.assert_array_equal(rec.category_ids, np.array([7, 11], dtype=np.int64))


def test_crowd_boxes_are_ignored(dataset):
    _, ann_file, _ = dataset
    index = CocoIndex(ann_file)
    rec = index.records[0]  # image 10 has one normal and one crowd box
    np.testing.assert_array_equal(rec.boxes_xyxy, np.array([[0, 0, 40, 30]], dtype=np.float32))
    np.testing.assert_array_equal(rec.category_ids, np.array([3], dtype=np.int64))
    assert index.dropped_boxes == 0  # crowd boxes are not "dropped" ones


def test_zero_or_negative_size_boxes_are_dropped_with_warning(tmp_path, caplog):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    anns = [
        _ann(1, 1, [1.0, 1.0, 0.0, 5.0]),  # zero width
        _ann(2, 1, [1.0, 1.0, 5.0, -2.0]),  # negative height
        _ann(3, 1, [1.0, 1.0, 5.0, 5.0]),  # kept
        _ann(4, 1, [2.0, 2.0, 0.0, 0.0]),  # zero size
    ]
    path = _write_json(tmp_path / "a.json", _doc(images, anns))
    with caplog.at_level(logging.WARNING, logger="frs_cli.data.coco"):
        index = CocoIndex(path)
    assert index.dropped_boxes == 3
    np.testing.assert_array_equal(index.records[0].boxes_xyxy, np.array([[1, 1, 6, 6]], dtype=np.float32))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 3 boxes of zero or negative size" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


def test_boxes_are_clipped_to_their_image_and_those_wholly_outside_are_dropped_with_a_warning(tmp_path, caplog):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    anns = [
        _ann(1, 1, [-5.0, 20.0, 15.0, 20.0]),  # over the left and bottom edges: clipped
        _ann(2, 1, [50.0, 5.0, 10.0, 10.0]),  # right of the image: dropped
        _ann(3, 1, [10.0, 30.0, 5.0, 5.0]),  # from the bottom edge down: dropped
        _ann(4, 1, [1.0, 1.0, 0.0, 5.0]),  # zero width: dropped
        _ann(5, 1, [2.0, 3.0, 5.0, 5.0]),  # inside: as it is
    ]
    path = _write_json(tmp_path / "a.json", _doc(images, anns))
    with caplog.at_level(logging.WARNING, logger="frs_cli.data.coco"):
        index = CocoIndex(path)
    np.testing.assert_array_equal(index.records[0].boxes_xyxy, np.array([[0, 20, 10, 30], [2, 3, 7, 8]], np.float32))
    assert index.dropped_boxes == 3
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"dropped 1 boxes of zero or negative size and 2 boxes wholly outside their image in {str(path)!r}" == warning


def _turned_jpeg(path, orientation: int):
    """A 40 (wide) x 30 JPEG stored with EXIF ``orientation``, left half red; shown turned when 5-8."""
    arr = np.zeros((30, 40, 3), dtype=np.uint8)
    arr[:, :20] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif, quality=95)


def test_an_exif_turned_image_is_read_turned_only_where_the_annotated_size_is_the_turned_one(tmp_path):
    """Orientation 6 (shown turned 90 degrees clockwise): annotated 40 x 30 (height x width, as a viewer shows it)
    gives the turned pixels, red on top; annotated 30 x 40 (the stored size, as COCO's) gives the stored pixels."""
    _turned_jpeg(tmp_path / "t.jpg", 6)
    turned = read_image(tmp_path / "t.jpg", (40, 30))
    assert turned.shape == (3, 40, 30)
    assert turned[0, :15].float().mean() > 200 and turned[0, 25:].float().mean() < 50  # red on top
    stored = read_image(tmp_path / "t.jpg", (30, 40))
    assert stored.shape == (3, 30, 40) and stored[0, :, :15].float().mean() > 200
    assert torch.equal(read_image(tmp_path / "t.jpg"), stored)
    _turned_jpeg(tmp_path / "u.jpg", 1)  # no turn: the annotated size does not match, and nothing is turned
    assert read_image(tmp_path / "u.jpg", (40, 30)).shape == (3, 30, 40)


def test_an_image_of_more_than_8_bits_a_channel_is_one_error_not_clipped_pixels(tmp_path):
    Image.new("I;16", (8, 8), 40000).save(tmp_path / "deep.png")  # a 16-bit grey PNG
    with pytest.raises(DataError, match=r"deep.png': expected 8 bits a channel .*got PIL mode 'I;16'"):
        read_image(tmp_path / "deep.png")


def test_no_warning_when_nothing_is_dropped(dataset, caplog):
    _, ann_file, _ = dataset
    with caplog.at_level(logging.WARNING, logger="frs_cli.data.coco"):
        CocoIndex(ann_file)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_non_contiguous_category_ids_map_to_contiguous_labels(dataset):
    root, ann_file, _ = dataset
    index = CocoIndex(ann_file)
    assert index.num_classes == 3
    assert index.label_to_category == [3, 7, 11]
    assert index.category_to_label == {3: 0, 7: 1, 11: 2}
    assert [c["id"] for c in index.categories] == [3, 7, 11]
    views = CocoViews(index, root / "train", NO_RESIZE)
    assert views[1].labels.tolist() == [1, 2]  # categories 7, 11
    assert views[0].labels.tolist() == [0]  # category 3
    assert views[0].labels.dtype == torch.int64


def test_label_map_category_id_keeps_ids_as_labels(dataset):
    root, ann_file, _ = dataset
    index = CocoIndex(ann_file, label_map="category_id")
    assert index.num_classes == 12
    assert index.label_to_category == list(range(12))
    views = CocoViews(index, root / "train", NO_RESIZE)
    assert views[1].labels.tolist() == [7, 11]
    assert views[0].labels.tolist() == [3]
    assert views[2].labels.tolist() == [11]


def test_label_map_category_id_refuses_ids_far_beyond_the_categories_count(tmp_path):
    """Category ids {3, 5, 1000, 20000, 4000000} under label_map 'category_id' would be a model of 4,000,001
    classes (before: built, and a traceback or an out-of-memory kill): refused at index time, naming the largest id,
    the count of categories and the fix. COCO's ids (80 categories, up to 90: 91 classes) pass."""
    images = [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}]
    cats = [{"id": i, "name": f"c{i}"} for i in (3, 5, 1000, 20000, 4000000)]
    path = _write_json(tmp_path / "a.json", _doc(images, [_ann(1, 1, [1, 1, 2, 2], cat=20000)], cats))
    assert CocoIndex(path).num_classes == 5  # contiguous: fine
    with pytest.raises(DataError) as err:
        CocoIndex(path, label_map="category_id")
    assert err.value.message == (f"annotations {str(path)!r}: data.label_map 'category_id' gives 4000001 classes (the "
                                 "largest category id is 4000000) for 5 categories, expected at most 105")
    assert err.value.hint == "set data.label_map = 'contiguous' (labels 0..4 in the order of ascending id)"
    coco = [{"id": i, "name": f"c{i}"} for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    assert len(coco) == 80
    path = _write_json(tmp_path / "coco.json", _doc(images, [], coco))
    assert CocoIndex(path, label_map="category_id").num_classes == 91


def test_unknown_label_map_raises_config_error(dataset):
    _, ann_file, _ = dataset
    with pytest.raises(ConfigError, match="data.label_map: expected 'contiguous' or 'category_id', got 'names'"):
        CocoIndex(ann_file, label_map="names")


def test_images_without_annotations_are_allowed(tmp_path):
    images = [{"id": 5, "file_name": "e.png", "height": 30, "width": 40},
              {"id": 6, "file_name": "f.png", "height": 30, "width": 40}]
    path = _write_json(tmp_path / "annotations" / "instances_train.json", _doc(images, [_ann(1, 6, [1, 1, 2, 2])]))
    (tmp_path / "train").mkdir()
    _two_colour_png(tmp_path / "train" / "e.png")
    index = CocoIndex(path)
    rec = index.records[0]
    assert rec.image_id == 5
    assert rec.boxes_xyxy.shape == (0, 4)
    assert rec.category_ids.shape == (0,)
    sample = CocoViews(index, tmp_path / "train", NO_RESIZE)[(0, "hflip")]
    assert tuple(sample.boxes.shape) == (0, 4)
    assert sample.boxes.dtype == torch.float32
    assert tuple(sample.labels.shape) == (0,)
    assert sample.labels.dtype == torch.int64


def test_annotation_naming_missing_image_raises_data_error(tmp_path):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    path = _write_json(tmp_path / "a.json", _doc(images, [_ann(17, 99, [1, 1, 2, 2])]))
    with pytest.raises(DataError, match="annotation 17 names image 99, which is not among the images"):
        CocoIndex(path)


def test_annotation_with_unknown_category_raises_data_error(tmp_path):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    path = _write_json(tmp_path / "a.json", _doc(images, [_ann(3, 1, [1, 1, 2, 2], cat=5)]))
    with pytest.raises(DataError, match=r"annotation 3 has category 5, expected one of \[1\]"):
        CocoIndex(path)


def test_annotation_with_malformed_bbox_structure_raises_data_error(tmp_path):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    for bbox, shown in (([1, 2, 3], "[1, 2, 3]"), (None, "null"), ("1 2 3 4", '"1 2 3 4"')):
        path = _write_json(tmp_path / "a.json", _doc(images, [_ann(1, 1, [1, 1, 2, 2]) | {"bbox": bbox}]))
        with pytest.raises(DataError) as info:
            CocoIndex(path)
        assert str(info.value).endswith(f"annotation 1: expected bbox [x, y, w, h] of 4 finite numbers, got {shown}")


@pytest.mark.parametrize("bbox", [["1", "1", "2", "2"], [1, 1, 2, None], [float("nan"), 1, 2, 2],
                                  [1, 1, float("inf"), 2]])
def test_annotation_with_non_numeric_or_non_finite_bbox_raises_data_error(tmp_path, bbox):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    path = _write_json(tmp_path / "a.json", _doc(images, [_ann(1, 1, [1, 1, 2, 2]) | {"bbox": bbox}]))
    with pytest.raises(DataError, match=r"annotation 1: expected bbox \[x, y, w, h\] of 4 finite numbers, got \["):
        CocoIndex(path)


def test_malformed_json_raises_one_line_data_error_naming_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [1, 2,\n\n "annotations": }\n', encoding="utf-8")
    with pytest.raises(DataError, match="expected JSON, got a parse error") as info:
        CocoIndex(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_json_that_is_not_a_coco_object_raises_data_error(tmp_path):
    path = _write_json(tmp_path / "list.json", [1, 2, 3])
    with pytest.raises(DataError, match="expected a JSON object, got list"):
        CocoIndex(path)
    path = _write_json(tmp_path / "nocats.json", {"images": [], "annotations": []})
    with pytest.raises(DataError, match="expected a list under 'categories', found none"):
        CocoIndex(path)
    path = _write_json(tmp_path / "emptycats.json", {"images": [], "annotations": [], "categories": []})
    with pytest.raises(DataError, match="expected at least one category"):
        CocoIndex(path)


@pytest.mark.parametrize(("key", "value", "found"), [("images", {"a": 1}, "found an object"),
                                                      ("annotations", "x", "found a string"),
                                                      ("categories", 3, "found a number")])
def test_a_top_level_key_that_is_no_list_is_named_with_what_arrived(tmp_path, key, value, found):
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}], key: value}
    path = _write_json(tmp_path / "a.json", doc)
    with pytest.raises(DataError, match=f"expected a list under '{key}', {found}$"):
        CocoIndex(path)


def test_missing_annotation_file_raises_data_error(tmp_path):
    path = tmp_path / "annotations" / "instances_nope.json"
    with pytest.raises(DataError, match="expected a COCO JSON file at .*instances_nope.json.*does not exist"):
        CocoIndex(path)


def test_fingerprint_is_the_files_images_not_its_bytes_or_place(dataset, tmp_path):
    """The dataset fingerprint (what a cache's targets take from the file) is the same re-read, copied elsewhere,
    with a box moved or a space added; the older one (``file_fingerprint``, the bytes) changes with the last two."""
    _, ann_file, _ = dataset
    a, old = dataset_fingerprint(CocoIndex(ann_file)), file_fingerprint(CocoIndex(ann_file))
    assert dataset_fingerprint(CocoIndex(ann_file)) == a  # re-read: the same
    copy = tmp_path / "elsewhere" / "copy.json"
    copy.parent.mkdir()
    shutil.copyfile(ann_file, copy)
    assert dataset_fingerprint(CocoIndex(copy)) == a and file_fingerprint(CocoIndex(copy)) == old
    doc = json.loads(ann_file.read_text(encoding="utf-8"))
    doc["annotations"][0]["bbox"] = [5.0, 4.0, 10.0, 7.0]
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc), encoding="utf-8")
    spaced = tmp_path / "spaced.json"
    spaced.write_bytes(ann_file.read_bytes() + b" ")  # same content, other bytes
    for other in (changed, spaced):
        assert dataset_fingerprint(CocoIndex(other)) == a and file_fingerprint(CocoIndex(other)) != old
    doc["images"][0]["width"] += 1
    changed.write_text(json.dumps(doc), encoding="utf-8")
    assert dataset_fingerprint(CocoIndex(changed)) != a


# -------------------------------------------------------------------------------------------- read_image


def test_read_image_decodes_png_and_jpeg_to_rgb_uint8(tmp_path):
    arr = _two_colour_png(tmp_path / "x.png", 40, 30, RED, BLUE)
    img = read_image(tmp_path / "x.png")
    assert img.dtype == torch.uint8
    assert tuple(img.shape) == (3, 30, 40)
    assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1))
    Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "y.jpg", quality=95)
    jpg = read_image(tmp_path / "y.jpg")
    assert tuple(jpg.shape) == (3, 30, 40)
    expected = torch.tensor([200, 100, 50], dtype=torch.int32)[:, None, None]
    assert int((jpg.int() - expected).abs().max()) <= 3  # JPEG is lossy on a solid colour only by rounding


def test_read_image_converts_grayscale_to_three_channels(tmp_path):
    Image.new("L", (7, 5), 123).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert torch.equal(img, torch.full((3, 5, 7), 123, dtype=torch.uint8))


def test_read_image_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="image: expected a file at .*nothere.png.*does not exist"):
        read_image(tmp_path / "nothere.png")


@pytest.mark.parametrize("content", [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n garbage", "truncated png",
                                     "truncated jpeg"])
def test_read_image_corrupt_bytes_raise_data_error(tmp_path, content):
    path = tmp_path / "bad.img"
    if content == "truncated png":
        Image.new("RGB", (40, 30), RED).save(path, format="PNG")
        path.write_bytes(path.read_bytes()[:40])
    elif content == "truncated jpeg":
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path, format="JPEG")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="bad.img.*could not be decoded") as info:
        read_image(path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- CocoViews


def test_views_orig_gives_image_and_boxes_unchanged_without_resize(dataset):
    root, ann_file, arrays = dataset
    views = CocoViews(CocoIndex(ann_file), root / "train", NO_RESIZE)
    assert len(views) == 3
    s = views[(1, "orig")]
    assert s.image_id == 20
    assert torch.equal(s.image, torch.from_numpy(arrays[20]).permute(2, 0, 1))
    torch.testing.assert_close(s.boxes, torch.tensor([[5.0, 4.0, 15.0, 10.0], [20.0, 10.0, 35.0, 25.0]]))
    assert s.geometry == compute_geometry(30, 40, NO_RESIZE)
    assert s.teacher is None
    # an int key means the original view
    assert torch.equal(views[1].image, s.image)


def test_views_hflip_flips_image_and_boxes(dataset):
    root, ann_file, arrays = dataset
    views = CocoViews(CocoIndex(ann_file), root / "train", NO_RESIZE)
    s = views[(1, "hflip")]
    original = torch.from_numpy(arrays[20]).permute(2, 0, 1)
    assert torch.equal(s.image, original.flip(-1))
    # image 20 is red on the left and blue on the right; flipped, blue is on the left
    assert s.image[:, 0, 0].tolist() == list(BLUE)
    assert s.image[:, 0, -1].tolist() == list(RED)
    # by hand: x -> 40 - x with x1 and x2 swapped
    torch.testing.assert_close(s.boxes, torch.tensor([[40 - 15.0, 4.0, 40 - 5.0, 10.0],
                                                      [40 - 35.0, 10.0, 40 - 20.0, 25.0]]))
    assert s.geometry.hflip is True


def test_views_hflip_with_resize_matches_apply_to_boxes(dataset):
    root, ann_file, _ = dataset
    index = CocoIndex(ann_file)
    views = CocoViews(index, root / "train", DOUBLE)
    s = views[(1, "hflip")]
    geom = compute_geometry(30, 40, DOUBLE, hflip=True)
    assert s.geometry == geom
    assert tuple(s.image.shape) == (3, 60, 80)
    # by hand: scale 2 -> [10, 8, 30, 20] and [40, 20, 70, 50]; flip in width 80 -> [50, 8, 70, 20], [10, 20, 40, 50]
    expected = torch.tensor([[50.0, 8.0, 70.0, 20.0], [10.0, 20.0, 40.0, 50.0]])
    torch.testing.assert_close(s.boxes, expected)
    torch.testing.assert_close(s.boxes, apply_to_boxes(torch.from_numpy(index.records[1].boxes_xyxy), geom))
    # colours away from the seam: blue on the left, red on the right after the flip
    assert s.image[:, 30, 5].tolist() == list(BLUE)
    assert s.image[:, 30, 75].tolist() == list(RED)


def test_views_missing_image_file_raises_data_error_naming_it(dataset):
    root, ann_file, _ = dataset
    (root / "train" / "b.png").unlink()
    views = CocoViews(CocoIndex(ann_file), root / "train", NO_RESIZE)
    with pytest.raises(DataError, match="b.png.*does not exist"):
        views[(1, "orig")]


def test_views_corrupt_image_raises_data_error(dataset):
    root, ann_file, _ = dataset
    (root / "train" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage garbage garbage")
    views = CocoViews(CocoIndex(ann_file), root / "train", NO_RESIZE)
    with pytest.raises(DataError, match="a.png.*could not be decoded"):
        views[0]


def test_views_image_size_differing_from_json_raises_data_error(dataset):
    root, ann_file, _ = dataset
    _two_colour_png(root / "train" / "b.png", 41, 30)
    views = CocoViews(CocoIndex(ann_file), root / "train", NO_RESIZE)
    with pytest.raises(DataError, match=r"b.png': annotations say 30x40 \(height x width\), the file is 30x41"):
        views[(1, "orig")]


def test_views_missing_image_dir_raises_data_error(dataset):
    _, ann_file, _ = dataset
    with pytest.raises(DataError, match="images: expected a directory at .*nodir"):
        CocoViews(CocoIndex(ann_file), ann_file.parent / "nodir", NO_RESIZE)


def test_views_from_config_uses_coco_layout(dataset):
    root, _, _ = dataset
    cfg = DataConfig(root=str(root), train="train", label_map="category_id")
    views = CocoViews.from_config(cfg, "train", NO_RESIZE)
    assert views.index.num_classes == 12
    assert views.image_dir == root / "train"
    assert views[2].image_id == 30


# -------------------------------------------------------------------------------------------- ViewSampler


def test_sampler_same_seed_and_epoch_gives_same_order_other_epoch_differs():
    a = ViewSampler(50, views=("orig", "hflip"), seed=3)
    b = ViewSampler(50, views=("orig", "hflip"), seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    first = list(a)
    b.set_epoch(3)
    assert list(b) != first
    assert [p for p, _ in b] != [p for p, _ in first]
    c = ViewSampler(50, views=("orig", "hflip"), seed=4)
    c.set_epoch(2)
    assert list(c) != first


def test_sampler_random_visits_each_image_once_per_epoch_in_given_views():
    s = ViewSampler(64, views=("orig", "hflip"), seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        items = list(s)
        assert len(items) == len(s) == 64
        assert sorted(p for p, _ in items) == list(range(64))
        views = Counter(v for _, v in items)
        assert set(views) == {"orig", "hflip"}  # both appear over 64 images
        assert views["orig"] + views["hflip"] == 64


def test_sampler_single_view_only_yields_that_view():
    s = ViewSampler(20, views=("hflip",), seed=0)
    assert {v for _, v in s} == {"hflip"}


def test_sampler_view_choice_all_yields_every_pair_once():
    s = ViewSampler(9, views=("orig", "hflip"), seed=2, view_choice="all")
    items = list(s)
    assert len(items) == len(s) == 18
    assert sorted(items) == sorted((p, v) for p in range(9) for v in ("orig", "hflip"))


def test_sampler_without_shuffle_is_in_position_order():
    s = ViewSampler(7, views=("orig",), shuffle=False)
    assert list(s) == [(p, "orig") for p in range(7)]


def test_sampler_start_yields_exact_tail_of_epoch():
    s = ViewSampler(23, views=("orig", "hflip"), seed=5)
    s.set_epoch(4)
    full = list(s)
    for k in (0, 1, 10, 22, 23):
        s.set_epoch(4, start=k)
        assert list(s) == full[k:]
    s.set_epoch(4)  # start resets to 0
    assert list(s) == full


def test_sampler_world_size_two_partitions_padded_epoch():
    n = 7
    full = ViewSampler(n, views=("orig", "hflip"), seed=9)
    full.set_epoch(1)
    order = list(full)
    padded = order + order[: 8 - n]  # 7 items padded by wrapping to 8
    ranks = []
    for rank in range(2):
        s = ViewSampler(n, views=("orig", "hflip"), seed=9, rank=rank, world_size=2)
        s.set_epoch(1)
        items = list(s)
        assert len(s) == 4
        assert len(items) == 4
        assert items == padded[rank::2]
        ranks.append(items)
    merged = [None] * 8
    merged[0::2], merged[1::2] = ranks[0], ranks[1]
    assert merged == padded
    assert {p for p, _ in ranks[0] + ranks[1]} == set(range(n))


def test_sampler_world_size_resume_skips_within_rank():
    s = ViewSampler(11, views=("orig",), seed=0, rank=1, world_size=3)
    s.set_epoch(0)
    full = list(s)
    assert len(full) == len(s) == 4  # ceil(11 / 3)
    s.set_epoch(0, start=2)
    assert list(s) == full[2:]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(DataError, match="expected at least one image"):
        ViewSampler(0)
    with pytest.raises(ConfigError, match="view_choice: expected 'random' or 'all', got 'some'"):
        ViewSampler(3, view_choice="some")


# ------------------------------------------------------------------------------------------------ collate


def test_collate_pads_to_batch_max_and_carries_targets(dataset):
    root, ann_file, _arrays = dataset
    views = CocoViews(CocoIndex(ann_file), root / "train", NO_RESIZE)
    a, c = views[(0, "orig")], views[(2, "hflip")]
    # a: 30 x 40 -> padded 32 x 40; c: 50 x 20 (scale min(30/20, 40/50) = 0.8 -> 40 x 16) -> padded 40 x 16
    assert a.geometry.valid_size == (30, 40)
    assert c.geometry.valid_size == (40, 16)
    batch = collate([a, c])
    H, W = max(a.geometry.padded_h, c.geometry.padded_h), max(a.geometry.padded_w, c.geometry.padded_w)
    assert (H, W) == (40, 40)
    assert tuple(batch.images.shape) == (2, 3, 40, 40)
    assert batch.images.dtype == torch.uint8
    for i, s in enumerate((a, c)):
        h, w = s.image.shape[-2:]
        assert torch.equal(batch.images[i, :, :h, :w], s.image)
        assert int(batch.images[i, :, h:, :].abs().sum()) == 0
        assert int(batch.images[i, :, :, w:].abs().sum()) == 0
    assert batch.image_sizes == [(30, 40), (40, 16)]
    assert batch.image_ids == [10, 30]
    assert batch.geometries == [a.geometry, c.geometry]
    assert torch.equal(batch.targets[0]["boxes"], a.boxes)
    assert torch.equal(batch.targets[0]["labels"], a.labels)
    assert torch.equal(batch.targets[1]["boxes"], c.boxes)
    assert torch.equal(batch.targets[1]["labels"], c.labels)
    assert batch.teacher is None
    # the content really is the picture: image 10 is green on the left, red on the right
    assert batch.images[0, :, 0, 0].tolist() == list(GREEN)
    assert batch.images[0, :, 0, 39].tolist() == list(RED)


def test_original_views_resized_by_resize_batch_equal_the_collated_batch(jitter_root):
    """teacher-cache on a GPU has workers decode only and resizes the originals on the device; on the CPU the
    same function must give exactly the batch of the usual pipeline (sizes, flips, padding)."""
    from frs_cli.data.coco import OriginalViews, resize_batch

    ds = CocoViews.from_config(DataConfig(root=str(jitter_root)), "train", GeometryConfig(40, 72, 8))
    keys = [(p, v) for p in range(8) for v in ("orig", "hflip")]
    want = collate([ds[k] for k in keys])
    images, sizes = resize_batch([OriginalViews(ds)[k] for k in keys], "cpu")
    assert sizes == want.image_sizes and torch.equal(images, want.images)
    assert len({tuple(ds.original(k)[0].shape) for k in keys}) > 1  # several original sizes, really resized


def test_original_batches_decode_each_file_once_and_resize_to_the_collated_batch(jitter_root, monkeypatch):
    """teacher-cache's GPU loader: a batch holding both views of its images decodes each file once, sends it to
    the device once and resizes it once per size, and the batch is still exactly the usual pipeline's."""
    from frs_cli.data import coco, transforms
    from frs_cli.data.coco import OriginalBatches, Originals, resize_batch

    ds = CocoViews.from_config(DataConfig(root=str(jitter_root)), "train", GeometryConfig(40, 72, 8))
    keys = [(p, v) for p in range(6) for v in ("orig", "hflip")] + [(7, "hflip")]
    want = collate([ds[k] for k in keys])
    decoded, resized = [], []
    read, resize = coco.read_image, transforms.resize_image
    monkeypatch.setattr(coco, "read_image", lambda path, size=None: decoded.append(path) or read(path, size))
    monkeypatch.setattr(coco, "resize_image", lambda image, g: resized.append(g) or resize(image, g))
    batch = OriginalBatches(ds)[keys]
    assert isinstance(batch, Originals) and len(batch.images) == 7 and len(decoded) == 7
    assert [i for i, _ in batch.views] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    images, sizes = resize_batch(batch.pin_memory() if torch.cuda.is_available() else batch, "cpu")
    assert len(resized) == 7 and sizes == want.image_sizes and torch.equal(images, want.images)
    # a DataLoader of such batches (workers, batch_size=None) hands the same batch over
    loader = torch.utils.data.DataLoader(OriginalBatches(ds), sampler=[keys], batch_size=None, num_workers=1,
                                         collate_fn=coco.collate_originals)
    (got,) = list(loader)
    assert torch.equal(resize_batch(got, "cpu")[0], want.images) and len(got.images) == 7


def test_replicate_grows_the_train_split_with_copies_under_new_ids(synth_root, tmp_path):
    from frs_cli.data.synth import replicate

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    before = CocoIndex(root / "annotations" / "instances_train.json")
    replicate(root, 3)
    after = CocoIndex(root / "annotations" / "instances_train.json")
    assert len(after) == 3 * len(before) and len(set(after.image_ids)) == len(after)
    assert sum(len(r.category_ids) for r in after.records) == 3 * sum(len(r.category_ids) for r in before.records)
    ds = CocoViews(after, root / "train", GeometryConfig(64, 64, 32))
    assert torch.equal(ds[len(before)].image, ds[0].image)  # the first copy of the first image


def test_pad_categories_lists_unused_categories_up_to_cocos_width_and_keeps_the_labels(synth_root, tmp_path):
    from frs_cli.data.synth import CATEGORIES, pad_categories

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    before = CocoIndex(root / "annotations" / "instances_train.json")
    pad_categories(root, 80)
    for split in ("train", "val"):
        after = CocoIndex(root / "annotations" / f"instances_{split}.json")
        assert after.num_classes == 80 and after.label_to_category[:5] == [c["id"] for c in CATEGORIES]
    after = CocoIndex(root / "annotations" / "instances_train.json")
    assert [r.category_ids.tolist() for r in after.records] == [r.category_ids.tolist() for r in before.records]
    with pytest.raises(ConfigError, match="^synthetic categories: expected at least 5 .*, got 3$"):
        pad_categories(root, 3)


IMAGE = {"id": 1, "file_name": "x.png", "height": 30, "width": 40}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(category_id="1"), "annotation 1: expected an integer 'category_id', got \"1\""),
    (lambda d: d["annotations"][0].update(category_id=1.5), "annotation 1: expected an integer 'category_id', got 1.5"),
    (lambda d: d["annotations"][0].update(image_id="1"), "annotation 1: expected an integer 'image_id', got \"1\""),
    (lambda d: d["annotations"][0].pop("image_id"), "annotation 1: expected an integer 'image_id', got none"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotation 1: expected a 'bbox' [x, y, w, h], got none"),
    (lambda d: d["annotations"].append(7), "annotations[1]: expected an object, got 7"),
    (lambda d: d["images"][0].update(id="500"), "images[0]: expected an integer 'id', got \"500\""),
    (lambda d: d["images"][0].pop("height"), "images[0] (id 1): expected a whole number of pixels 'height', got none"),
    (lambda d: d["images"][0].update(width=40.5), "images[0] (id 1): expected a whole number of pixels 'width', got 40.5"),
    (lambda d: d["images"][0].pop("file_name"), "images[0] (id 1): expected a string 'file_name', got none"),
    (lambda d: d["categories"][0].update(id="1"), "categories[0]: expected an integer 'id', got \"1\""),
    (lambda d: d["categories"][0].pop("name"), "categories[0] (id 1): expected a 'name', got none"),
])
def test_an_entry_of_the_wrong_type_is_one_line_naming_the_entry_and_the_key(tmp_path, edit, message):
    """Ids are integers as COCO writes them: a string "1" was read as 1 for training (and a float 1.5 as 1) while
    eval refused the same file; an entry lacking a key was 'an image or category entry lacks 'height''."""
    doc = _doc([dict(IMAGE)], [_ann(1, 1, [1, 1, 2, 2])])
    edit(doc)
    path = _write_json(tmp_path / "a.json", doc)
    with pytest.raises(DataError) as info:
        CocoIndex(path)
    assert info.value.message == f"annotations {str(path)!r}: {message}"


def test_an_image_size_written_as_a_whole_float_is_read(tmp_path):
    path = _write_json(tmp_path / "a.json", _doc([IMAGE | {"height": 30.0}], [_ann(1, 1, [1, 1, 2, 2])]))
    assert (CocoIndex(path).records[0].height, CocoIndex(path).records[0].width) == (30, 40)
