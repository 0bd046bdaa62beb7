"""``frs convert mmdet`` against mmdetection itself (the ``mmdet`` extra: mmengine, mmcv-lite, mmdet).

Each of the paper's four teachers is built from mmdetection's own model-zoo config with random weights, its
state dict saved as mmdetection saves one, converted by ``frs convert mmdet``, and both models run on the same
two images (of different sizes, so padding is exercised): FPN levels and classification logits agree within
1e-5 (GFL: also its box distributions; Faster R-CNN: the RPN objectness is its classification output).
The detections of RetinaNet, FCOS and GFL agree too (boxes 1e-3 px, scores 1e-4). Each side preprocesses its own way (frs:
RGB uint8 -> its adapter's normalisation; mmdetection: the BGR image through its DetDataPreprocessor),
so the input conventions (mean/std, BGR for caffe bodies, zero padding after normalising) are compared too.
"""

from __future__ import annotations

import mmdet_stack
import pytest
import torch
from torch.testing import assert_close

REASON, MMDET = mmdet_stack.load()
pytestmark = [pytest.mark.mmdet, pytest.mark.skipif(MMDET is None, reason=str(REASON))]

SIZES = [(224, 288), (200, 256)]  # (h, w); the batch pads to 224 x 288 (not a multiple of 128: P7 rounds up)
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _images():
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in SIZES]


def _frs_batch(images):
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    batch = torch.zeros(len(images), 3, h, w, dtype=torch.uint8)
    for k, img in enumerate(images):
        batch[k, :, : img.shape[1], : img.shape[2]] = img
    return batch, [tuple(i.shape[1:]) for i in images]


def _convert(tmp_path, arch):
    from frs_cli.convert import convert_mmdet
    from frs_cli.train.checkpoint import load_detector

    ref = mmdet_stack.build(MMDET, arch)
    mmdet_stack.calibrate_bn(ref, mmdet_stack.preprocess(ref, _images())[0])
    path = tmp_path / "mmdet.pth"
    torch.save({"meta": {"mmdet_version": MMDET.__version__}, "state_dict": ref.state_dict()}, path)
    convert_mmdet(path, arch, tmp_path / "frs.pt")
    detector, ckpt = load_detector(tmp_path / "frs.pt")
    return ref, detector.eval(), ckpt


def _run_both(ref, detector, detect=False):
    images = _images()
    inputs, samples = mmdet_stack.preprocess(ref, images)
    batch, sizes = _frs_batch(images)
    with torch.no_grad():
        feats = ref.extract_feat(inputs)
        out = detector(batch, sizes, detect=detect)
    return feats, out, inputs, samples


@pytest.mark.parametrize("arch", ["retinanet_resnet101_fpn_mmdet", "fcos_resnet101_caffe_fpn_mmdet",
                                  "gfl_resnet101_fpn_mmdet", "fcos_resnet50_caffe_fpn_tricks_mmdet"])
def test_converted_dense_detector_matches_mmdetection_features_and_logits(tmp_path, arch):
    ref, detector, _ = _convert(tmp_path, arch)
    feats, out, _, _ = _run_both(ref, detector)
    assert len(feats) == len(out.features) == 5
    for level, (a, b) in enumerate(zip(feats, out.features)):
        assert a.shape == b.shape, level
        assert_close(b, a, **TOL, msg=lambda m, lv=level: f"P{lv + 3} features: {m}")
    with torch.no_grad():
        head_out = ref.bbox_head(feats)
    for level, (a, b) in enumerate(zip(head_out[0], out.cls_logits)):
        assert_close(b, a, **TOL, msg=lambda m, lv=level: f"P{lv + 3} class logits: {m}")
    # values of a sensible scale that vary: a comparison of constants, or of 1e7s at rtol, would prove little
    assert 1e-3 < float(head_out[0][0].std()) < 10 and float(feats[0].abs().max()) < 1e3
    if arch.startswith("gfl"):
        with torch.no_grad():
            dists = detector.model.head.box(out.features)
        for level, (a, b) in enumerate(zip(head_out[1], dists)):
            assert_close(b, a, **TOL, msg=lambda m, lv=level: f"P{lv + 3} box distributions: {m}")


def test_converted_faster_rcnn_matches_mmdetection_fpn_and_rpn_objectness(tmp_path):
    ref, detector, _ = _convert(tmp_path, "fasterrcnn_resnet101_fpn_mmdet")
    feats, out, _, _ = _run_both(ref, detector)
    with torch.no_grad():
        objectness, _ = ref.rpn_head(feats)
    assert len(out.features) == len(objectness) == 5
    # mmdetection's neck gives P2-P6 (P6 by max-pooling P5) as frs's Faster R-CNN levels
    for level, (a, b) in enumerate(zip(feats, out.features)):
        assert_close(b, a, **TOL, msg=lambda m, lv=level: f"P{lv + 2} features: {m}")
    for level, (a, b) in enumerate(zip(objectness, out.cls_logits)):
        assert_close(b, a, **TOL, msg=lambda m, lv=level: f"P{lv + 2} RPN objectness: {m}")


CLS_CONVS = {  # arch -> (mmdetection's class conv, the adapter's)
    "retinanet_resnet101_fpn_mmdet": ("retina_cls", lambda d: d.model.head.classification_head.cls_logits),
    "fcos_resnet101_caffe_fpn_mmdet": ("conv_cls", lambda d: d.model.head.classification_head.cls_logits),
    "gfl_resnet101_fpn_mmdet": ("gfl_cls", lambda d: d.model.head.classification.logits),
}


@pytest.mark.parametrize("arch", list(CLS_CONVS))
def test_converted_detector_detects_what_mmdetection_detects(tmp_path, arch):
    """Like for like: the same pixels in (each side's own preprocessing, at scale 1, no resize), mmdetection's
    test_cfg on both sides (score > 0.05, top 1000 per level, FCOS's score x centerness after that, empty boxes
    dropped, class-wise NMS at the config's IoU, 100 per image; the converter writes these settings into the
    frs checkpoint), boxes in the input image's pixels (mmdetection's ``rescale=False``)."""
    ref, detector, ckpt = _convert(tmp_path, arch)
    nms = 0.6 if arch.startswith("gfl") else 0.5
    assert (ckpt["model_config"]["score_thresh"], ckpt["model_config"]["nms_thresh"],
            ckpt["model_config"]["detections_per_img"]) == (0.05, nms, 100)
    feats, _, _, _ = _run_both(ref, detector)
    ref_conv, frs_conv = getattr(ref.bbox_head, CLS_CONVS[arch][0]), CLS_CONVS[arch][1](detector)
    with torch.no_grad():  # class logits spread around 0 (std 2), not at the 0.01 prior: so that detections exist
        logits = ref.bbox_head(feats)[0]
        gain = 2.0 / float(torch.cat([t.flatten() for t in logits]).std())
        for m in (ref_conv, frs_conv):
            m.weight.mul_(gain)
            m.bias.zero_()
    _, out, inputs, samples = _run_both(ref, detector, detect=True)
    with torch.no_grad():
        results = ref.predict(inputs, samples, rescale=False)
    for k, (res, det) in enumerate(zip(results, out.detections)):
        pred = res.pred_instances
        assert 20 <= len(pred.scores) <= 100, k
        assert len(det["scores"]) == len(pred.scores), k
        assert_close(det["scores"], pred.scores, atol=1e-4, rtol=0)
        assert torch.equal(det["labels"], pred.labels)
        assert_close(det["boxes"], pred.bboxes, atol=1e-3, rtol=0)
