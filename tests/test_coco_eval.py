"""COCO box mAP on tiny hand-written ground truth."""

import json
import logging

import pytest
import torch

from frs_cli.errors import DataError
from frs_cli.eval.coco_eval import (
    METRIC_KEYS,
    CocoEvaluator,
    evaluate_detections,
    load_coco,
    load_detections,
)

# Categories with non-contiguous ids; objects of every COCO size range (area < 32^2, < 96^2, larger),
# some with non-integer boxes.
GT_ANNOTATIONS = [
    # image_id, category_id, [x, y, w, h]
    (1, 3, [10.5, 20.25, 20.0, 15.5]),  # small: 310 px^2
    (1, 7, [100.0, 50.0, 50.3, 60.7]),  # medium: ~3053 px^2
    (2, 11, [5.0, 5.0, 150.0, 120.0]),  # large: 18000 px^2
    (2, 3, [200.0, 150.0, 40.0, 40.0]),  # medium: 1600 px^2
]


def write_gt(tmp_path, annotations=GT_ANNOTATIONS, name="gt.json"):
    data = {
        "images": [{"id": 1, "width": 320, "height": 240}, {"id": 2, "width": 320, "height": 240}],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 11, "name": "c"}],
        "annotations": [
            {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for i, (img, cat, box) in enumerate(annotations)
        ],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def gt_as_detections(annotations=GT_ANNOTATIONS):
    return [{"image_id": img, "category_id": cat, "bbox": list(box), "score": 1.0} for img, cat, box in annotations]


def test_ground_truth_as_detections_scores_one(tmp_path, capsys):
    coco = load_coco(write_gt(tmp_path))
    metrics = evaluate_detections(coco, gt_as_detections())
    assert set(metrics) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(1.0), key
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are silenced


def test_detections_are_not_modified(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    dets = gt_as_detections()
    before = json.loads(json.dumps(dets))
    evaluate_detections(coco, dets)
    assert dets == before  # loadRes would add id/area/iscrowd/segmentation to the caller's dicts


def test_no_detections_score_zero(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    assert evaluate_detections(coco, []) == {key: 0.0 for key in METRIC_KEYS}


def test_size_range_without_ground_truth_reports_zero(tmp_path):
    coco = load_coco(write_gt(tmp_path, annotations=[(1, 3, [0.0, 0.0, 200.0, 200.0])]))
    metrics = evaluate_detections(coco, gt_as_detections([(1, 3, [0.0, 0.0, 200.0, 200.0])]))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APl"] == pytest.approx(1.0)
    assert metrics["APs"] is None and metrics["APm"] is None  # pycocotools says -1: undefined, not zero


def test_shifted_boxes_pass_iou_half_but_not_three_quarters(tmp_path):
    # A 100x100 box shifted right by dx overlaps its ground truth with IoU (100 - dx) / (100 + dx);
    # dx = 24 gives 76 / 124 = 0.613: a hit at IoU thresholds 0.50, 0.55, 0.60, a miss from 0.65 up.
    gt = [(1, 3, [50.0, 40.0, 100.0, 100.0])]
    coco = load_coco(write_gt(tmp_path, annotations=gt))
    metrics = evaluate_detections(coco, [{"image_id": 1, "category_id": 3, "bbox": [74.0, 40.0, 100.0, 100.0],
                                          "score": 0.9}])
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == 0.0
    assert metrics["AP"] == pytest.approx(0.3)  # 3 of the 10 IoU thresholds


def test_one_right_and_one_wrong_class_is_partial(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    dets = gt_as_detections(GT_ANNOTATIONS[:2])
    dets[1]["category_id"] = 11  # the medium object of category 7 labelled as category 11
    ap = evaluate_detections(coco, dets, image_ids=[1])["AP"]
    assert 0.0 < ap < 1.0


def test_image_ids_restrict_evaluation(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    only_image_1 = gt_as_detections([a for a in GT_ANNOTATIONS if a[0] == 1])
    assert evaluate_detections(coco, only_image_1, image_ids=[1])["AP"] == pytest.approx(1.0)
    assert evaluate_detections(coco, only_image_1)["AP"] < 1.0  # image 2's objects are missed


def test_evaluator_maps_labels_and_round_trips_results(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    label_to_category = [3, 7, 11]
    evaluator = CocoEvaluator(coco, label_to_category)
    for image_id in (1, 2):
        anns = [a for a in GT_ANNOTATIONS if a[0] == image_id]
        boxes = torch.tensor([[x, y, x + w, y + h] for _, _, (x, y, w, h) in anns], dtype=torch.float32)
        labels = torch.tensor([label_to_category.index(cat) for _, cat, _ in anns])
        evaluator.process([image_id], [{"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels}])
    metrics = evaluator.evaluate()
    assert metrics["AP"] == pytest.approx(1.0)
    assert {r["category_id"] for r in evaluator.results} == {3, 7, 11}

    out = tmp_path / "sub" / "results.json"
    evaluator.write_results(out)
    assert load_detections(out) == evaluator.results

    evaluator.reset()
    assert evaluator.results == [] and evaluator.image_ids == []


def test_category_id_labels_score_their_categories_and_leave_out_labels_of_no_category(tmp_path):
    """label_map = 'category_id': labels 0..11 for categories 3, 7, 11 (as torchvision's 91 outputs for COCO's 80
    ids). Detections of labels 3, 7, 11 score; those of background 0 and the skipped ids are left out, not counted
    against AP."""
    coco = load_coco(write_gt(tmp_path))
    evaluator = CocoEvaluator(coco, list(range(12)))
    for image_id in (1, 2):
        anns = [a for a in GT_ANNOTATIONS if a[0] == image_id]
        boxes = torch.tensor([[x, y, x + w, y + h] for _, _, (x, y, w, h) in anns] + [[0, 0, 5, 5]] * 2,
                             dtype=torch.float32)
        labels = torch.tensor([cat for _, cat, _ in anns] + [0, 5])
        evaluator.process([image_id], [{"boxes": boxes, "scores": torch.ones(len(labels)), "labels": labels}])
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)
    assert {r["category_id"] for r in evaluator.results} == {3, 7, 11}
    assert len(evaluator.results) == len(GT_ANNOTATIONS)


def test_evaluator_counts_images_without_detections(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    evaluator = CocoEvaluator(coco, [3, 7, 11])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    evaluator.process([1], [empty])
    assert evaluator.evaluate()["AP"] == 0.0


def test_evaluator_rejects_bad_labels_and_images(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    with pytest.raises(DataError, match=r"^model labels: expected a label for every category id with objects in the ground truth \[3, 7, 11\], got labels for \[3, 8\] \(none for \[7, 11\]\)"):
        CocoEvaluator(coco, [3, 8])
    evaluator = CocoEvaluator(coco, [3, 7, 11])
    out = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([3])}
    with pytest.raises(DataError, match=r"labels in 0\.\.2"):
        evaluator.process([1], [out])
    with pytest.raises(DataError, match="unknown image_id 99"):
        evaluator.process([99], [out])
    with pytest.raises(DataError, match="at least one processed image"):
        CocoEvaluator(coco, [3, 7, 11]).evaluate()


def test_malformed_json_raises_data_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="valid JSON"):
        load_coco(path)
    with pytest.raises(DataError, match="valid JSON"):
        load_detections(path)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="expected a JSON file at .*nope.json.*, but it does not exist"):
        load_coco(tmp_path / "nope.json")
    with pytest.raises(DataError, match="does not exist"):
        load_detections(tmp_path / "nope.json")


def test_missing_required_keys_raise_data_error(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="missing categories"):
        load_coco(path)
    path.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 1}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}))
    with pytest.raises(DataError, match=r"annotations\[0\].*bbox"):
        load_coco(path)


def test_malformed_detections_raise_data_error(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(DataError, match="JSON list"):
        load_detections(path)
    path.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3], "score": 0.5}]))
    with pytest.raises(DataError, match=r"detection \[0\].*bbox"):
        load_detections(path)


def test_unknown_image_or_category_in_detections_raises_data_error(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    dets = gt_as_detections()
    dets[2]["image_id"] = 42
    with pytest.raises(DataError, match="unknown image_id 42"):
        evaluate_detections(coco, dets)
    dets = gt_as_detections()
    dets[0]["category_id"] = 5
    with pytest.raises(DataError, match="unknown category_id 5"):
        evaluate_detections(coco, dets)
    with pytest.raises(DataError, match="unknown id 42"):
        evaluate_detections(coco, [], image_ids=[1, 42])


def test_annotation_id_zero_is_renumbered(tmp_path, caplog):
    # pycocotools records a match by the GT's id and reads 0 as "no match": an id-0 object can never be hit.
    path = write_gt(tmp_path, annotations=GT_ANNOTATIONS[:1])
    data = json.loads(path.read_text())
    data["annotations"][0]["id"] = 0
    del data["annotations"][0]["area"]  # filled from the box
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        coco = load_coco(path)
    assert "renumbering" in caplog.text
    assert evaluate_detections(coco, gt_as_detections(GT_ANNOTATIONS[:1]), image_ids=[1])["AP"] == pytest.approx(1.0)


def test_undefined_size_range_is_none_in_all_twelve_stats_also_without_detections(tmp_path):
    from frs_cli.eval.coco_eval import STAT_KEYS, coco_stats

    coco = load_coco(write_gt(tmp_path, annotations=[(1, 3, [0.0, 0.0, 20.0, 20.0])]))  # one small object only
    perfect = coco_stats(coco, gt_as_detections([(1, 3, [0.0, 0.0, 20.0, 20.0])]))
    assert list(perfect) == list(STAT_KEYS)
    assert {k for k, v in perfect.items() if v is None} == {"APm", "APl", "ARm", "ARl"}
    assert perfect["APs"] == pytest.approx(1.0) and perfect["ARs"] == pytest.approx(1.0)
    empty = coco_stats(coco, [])
    assert {k for k, v in empty.items() if v is None} == {"APm", "APl", "ARm", "ARl"}
    assert all(v == 0.0 for v in empty.values() if v is not None)


def test_undefined_metrics_are_shown_as_a_dash_and_left_out_of_means():
    from frs_cli.eval.coco_eval import format_metric, mean_defined

    assert format_metric(None) == "\u2013" and format_metric(float("nan")) == "\u2013"
    assert format_metric(0.4151) == "41.5" and format_metric(0.0) == "0.0"
    assert mean_defined([0.2, None, 0.4]) == pytest.approx(0.3)  # not (0.2 + 0 + 0.4) / 3
    assert mean_defined([None, None]) is None


def noisy_detections(seed=0):
    """Shifted, rescaled and mislabelled copies of the ground truth with random scores."""
    import random

    rng = random.Random(seed)
    dets = []
    for img, _, (x, y, w, h) in GT_ANNOTATIONS * 6:
        box = [x + rng.uniform(-6, 6), y + rng.uniform(-6, 6), w * rng.uniform(0.6, 1.4), h * rng.uniform(0.6, 1.4)]
        dets.append({"image_id": img, "category_id": rng.choice([3, 7, 11]), "bbox": box, "score": rng.random()})
    return dets


def test_faster_backend_gives_pycocotools_twelve_stats(tmp_path):
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed (pip install 'frs[faster-eval]')")
    from frs_cli.eval.coco_eval import STAT_KEYS, coco_stats

    coco = load_coco(write_gt(tmp_path))
    for dets in (noisy_detections(0), noisy_detections(1), gt_as_detections(), []):
        ref = coco_stats(coco, dets, backend="pycocotools")
        fast = coco_stats(coco, dets, backend="faster")
        assert list(fast) == list(STAT_KEYS)
        for key in STAT_KEYS:
            assert (ref[key] is None) == (fast[key] is None), key
            if ref[key] is not None:
                assert fast[key] == pytest.approx(ref[key], abs=1e-6), key
        assert 0.05 < ref["AP"] < 0.95 or dets in ([], gt_as_detections())  # a non-trivial case was compared
    sub = coco_stats(coco, noisy_detections(2), image_ids=[2], backend="faster")
    assert sub == pytest.approx(coco_stats(coco, noisy_detections(2), image_ids=[2]), abs=1e-6)


def test_unknown_backend_is_a_data_error(tmp_path):
    coco = load_coco(write_gt(tmp_path))
    with pytest.raises(DataError, match="expected one of pycocotools, faster, got 'fast'"):
        evaluate_detections(coco, gt_as_detections(), backend="fast")


def test_category_differences_name_each_id_whose_name_differs_or_that_the_model_lacks():
    from frs_cli.data.coco import category_differences

    data = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "eel"}]
    same = {"category_ids": [1, 3, 7], "category_names": ["cat", "dog", "eel"]}
    assert category_differences(same, data) is None
    assert category_differences({"category_ids": [1, 3, 7, 9], "category_names": ["cat", "dog", "eel", "fox"]},
                                data) is None  # a model of more categories: those of the data agree
    other = {"category_ids": [1, 3], "category_names": ["cat", "hog"]}
    assert category_differences(other, data) == ("id 3 is 'hog' in the model, 'dog' in the data; "
                                                  "id 7 ('eel') is no category of the model")
    assert category_differences({"category_ids": [], "category_names": []}, data, shown=1) == (
        "id 1 ('cat') is no category of the model (and 2 more)")
    assert category_differences({"category_names": ["x"]}, data) is None  # a model file from before the ids


def test_a_string_id_or_a_repeated_category_is_refused_as_the_training_index_refuses_it(tmp_path):
    """One reading of a file for every command: a category_id "7" is named as a string, not as 'not listed'; a
    category or image id listed twice is refused (COCO's index would keep one entry of the id)."""
    from frs_cli.data.coco import CocoIndex

    def doc(**edit):
        d = {"images": [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}],
             "categories": [{"id": 7, "name": "a"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 0}]}
        for key, value in edit.items():
            d[key] = value(d[key])
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(d))
        return path

    path = doc(annotations=lambda a: [a[0] | {"category_id": "7"}])
    with pytest.raises(DataError, match=r"annotations\[0\]: expected an integer 'category_id', got \"7\"$"):
        load_coco(path)
    with pytest.raises(DataError, match=r"annotation 1: expected an integer 'category_id', got \"7\"$"):
        CocoIndex(path)
    path = doc(categories=lambda c: c + [{"id": 7, "name": "b"}])
    with pytest.raises(DataError, match=r"expected unique category ids, found 7 twice \(categories\[1\]\)$"):
        load_coco(path)
    with pytest.raises(DataError, match="expected unique category ids, found repeats"):
        CocoIndex(path)
    path = doc(images=lambda i: i + [dict(i[0])])
    with pytest.raises(DataError, match=r"expected unique image ids, found 1 twice \(images\[1\]\)$"):
        load_coco(path)


@pytest.mark.parametrize("batch_size", [3, 12])
def test_detections_of_images_of_several_canvases_do_not_depend_on_the_batch_size(jitter_root, batch_size):
    """``predict`` runs each image padded to its own canvas only (batches of one canvas): every image's detections
    equal those of batches of one image (to rounding), whatever the batch size or the other images of the split (before: a batch
    was padded to its largest image, so a tall image changed the scores of the square ones batched with it)."""
    from frs_cli.data.coco import CocoViews
    from frs_cli.data.config import DataConfig
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.dist import setup
    from frs_cli.eval.predict import predict
    from frs_cli.models import ModelConfig, build_detector

    ds = CocoViews.from_config(DataConfig(root=str(jitter_root)), "train", GeometryConfig(64, 64, 16))
    assert len({ds.geometry_of(p, "orig").padded_size for p in range(len(ds))}) == 3
    torch.manual_seed(0)
    detector = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16, score_thresh=0.0), 5)
    ctx = setup("cpu")
    alone = dict(zip(*predict(detector, ds, ctx, batch_size=1, workers=0)))
    together = dict(zip(*predict(detector, ds, ctx, batch_size=batch_size, workers=0)))
    assert sorted(alone) == sorted(together) == sorted(r.image_id for r in ds.index.records)
    for image_id, want in alone.items():  # equal to rounding: the CPU's convolutions sum in another order per batch
        got = together[image_id]
        assert len(want["scores"]) > 0 and torch.equal(got["labels"], want["labels"]), image_id
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-3)  # px
