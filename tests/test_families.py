"""FCOS, Faster R-CNN and GFL behind the one Detector interface: logits in the head's own layout, the official
FRS channel set, GT losses equal to the underlying module's, torchvision weight layouts, compatibility."""

import pytest
import torch
from torchvision.models.detection.rpn import concat_box_prediction_layers

from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig
from frs_cli.errors import FrsError
from frs_cli.losses import frs_masks
from frs_cli.models import FrsSignature, LevelSpec, ModelConfig, build_detector, check_compatible, check_distillable
from frs_cli.models.base import to_head_layout
from frs_cli.train.config import DistillConfig
from frs_cli.train.objectives import FRSObjective, OnlineTeacher

K = 5


@pytest.fixture
def batch(synth_root):
    ds = CocoViews.from_config(DataConfig(root=str(synth_root)), "train", GeometryConfig(64, 64, 32))
    return collate([ds[(i, "orig")] for i in range(3)])


def _tiny(arch, **kw):
    torch.manual_seed(0)
    return build_detector(ModelConfig(arch=arch, **kw), K)


def _as_torchvision(model, min_size=64):
    """torchvision's own forward on our 64 x 64 batch: its resize is then a no-op."""
    model.transform.min_size, model.transform.max_size = (min_size,), min_size
    return model


# -- per-level logits are the module's own head output, reordered ---------------------------------------------

def test_fcos_logits_are_torchvision_head_output_reordered(batch):
    d = _tiny("fcos_tiny_fpn").eval()
    with torch.no_grad():
        out = d(batch.images, batch.image_sizes, detect=False)
        reference = d.core().head(out.features)["cls_logits"]  # (B, sum HW, K)
    assert [tuple(c.shape) for c in out.cls_logits] == [(3, K, h, h) for h in (8, 4, 2, 1, 1)]
    torch.testing.assert_close(to_head_layout(out.cls_logits, K), reference, rtol=0, atol=0)
    h, w, k = 2, 5, 3  # position (h, w) of P3 is row h * W + w of torchvision's flattening
    assert out.cls_logits[0][1, k, h, w] == reference[1, h * 8 + w, k]


def test_faster_rcnn_logits_are_the_rpn_objectness_on_p2_to_p6(batch):
    d = _tiny("fasterrcnn_tiny_fpn").eval()
    with torch.no_grad():
        out = d(batch.images, batch.image_sizes, detect=False)
        objectness, deltas = d.core().rpn.head(out.features)
        flat, _ = concat_box_prediction_layers(objectness, deltas)  # (B * sum HWA, 1), the RPN's own order
    assert d.level_names == ["P2", "P3", "P4", "P5", "P6"]
    assert [tuple(c.shape) for c in out.cls_logits] == [(3, 3, h, h) for h in (16, 8, 4, 2, 1)]
    for ours, theirs in zip(out.cls_logits, objectness):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(to_head_layout(out.cls_logits, 1).reshape(-1, 1), flat, rtol=0, atol=0)
    named = d.core().backbone(d.normalize(batch.images, batch.image_sizes))
    assert list(named) == ["0", "1", "2", "3", "pool"]  # all five RPN levels, "pool" included


def test_gfl_logits_follow_the_anchor_order(batch):
    from frs_cli.models.gfl.model import _flatten

    d = _tiny("gfl_tiny_fpn", anchor_size=32).eval()
    with torch.no_grad():
        out = d(batch.images, batch.image_sizes, detect=False)
        cls, _ = d.core().head(out.features)
    assert [tuple(c.shape) for c in out.cls_logits] == [(3, K, h, h) for h in (8, 4, 2, 1, 1)]
    for a, b in zip(out.cls_logits, cls):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    from torchvision.models.detection.image_list import ImageList

    anchors = d.core().anchor_generator(ImageList(batch.images.float(), batch.image_sizes), out.features)[0]
    flat = _flatten(out.cls_logits)  # (B, sum HW, K): row r of the flattening is anchor r
    h, w = 3, 6
    row = h * 8 + w  # a P3 position
    assert flat[2, row, 4] == out.cls_logits[0][2, 4, h, w]
    centre = (anchors[row, :2] + anchors[row, 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([w * 8.0, h * 8.0]))  # torchvision's grid: x = w * stride


# -- the mask uses exactly the official channel set -----------------------------------------------------------

def _masks(d, batch):
    with torch.no_grad():
        return frs_masks(d(batch.images, batch.image_sizes, detect=False).cls_logits)


@pytest.mark.parametrize("arch,other_branch,channels", [
    ("fcos_tiny_fpn", "head.regression_head.bbox_ctrness", K),  # K classes; centerness not used
    ("fasterrcnn_tiny_fpn", "roi_heads.box_predictor.cls_score", 3),  # 3 objectness logits; ROI head not used
    ("gfl_tiny_fpn", "head.box.distribution", K),  # K classes; box distributions not used
])
def test_mask_is_the_max_over_the_official_channels_only(batch, arch, other_branch, channels):
    d = _tiny(arch).eval()
    masks = _masks(d, batch)
    head = d.cls_head()
    with torch.no_grad():
        x = d.normalize(batch.images, batch.image_sizes)
        logits = head(list(d.core().backbone(x).values()))
    assert d.cls_channels == channels and d.cls_head_spec()["cls_channels"] == channels
    assert len(masks) == 5
    for m, z in zip(masks, logits):
        assert z.shape[1] == channels
        torch.testing.assert_close(m, torch.sigmoid(z.amax(dim=1)), rtol=0, atol=0)
    module = d.core().get_submodule(other_branch)
    with torch.no_grad():
        module.weight.normal_(0, 1.0)
        module.bias.fill_(3.0)
    for a, b in zip(masks, _masks(d, batch)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- GT losses ---------------------------------------------------------------------------------------------

def test_fcos_gt_losses_equal_torchvision_forward(batch):
    d = _tiny("fcos_tiny_fpn").train()
    ours = d(batch.images, batch.image_sizes, batch.targets).losses
    theirs = _as_torchvision(d.core())([im.float() / 255 for im in batch.images], batch.targets)
    assert set(ours) == set(theirs) == {"classification", "bbox_regression", "bbox_ctrness"}
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_faster_rcnn_gt_losses_equal_torchvision_forward_with_the_same_seed(batch):
    d = _tiny("fasterrcnn_tiny_fpn").train()
    torch.manual_seed(3)
    for _ in batch.images:  # torchvision's transform draws one number per image (its random min_size) in training
        torch.empty(1).uniform_()
    ours = d(batch.images, batch.image_sizes, batch.targets).losses
    shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in batch.targets]  # torchvision: 0 = background
    torch.manual_seed(3)
    theirs = _as_torchvision(d.core())([im.float() / 255 for im in batch.images], shifted)
    assert set(ours) == set(theirs) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_faster_rcnn_detections_match_torchvision_inference_with_labels_shifted_back(batch):
    d = _tiny("fasterrcnn_tiny_fpn", score_thresh=0.0).eval()
    with torch.no_grad():
        ours = d(batch.images, batch.image_sizes).detections
        theirs = _as_torchvision(d.core())([im.float() / 255 for im in batch.images])
    for a, b in zip(ours, theirs):
        assert len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"] - 1) and int(a["labels"].min()) >= 0


def test_gfl_losses_are_finite_and_fall_on_a_tiny_overfit(batch):
    d = _tiny("gfl_tiny_fpn", anchor_size=32).train()
    opt = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(30):
        losses = d(batch.images, batch.image_sizes, batch.targets).losses
        assert set(losses) == {"quality_focal", "giou", "distribution_focal"}
        assert all(torch.isfinite(v) for v in losses.values())
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    first, last = history[0], history[-1]
    assert last["giou"] < 0.5 * first["giou"] and last["distribution_focal"] < 0.5 * first["distribution_focal"]
    assert sum(last.values()) < 0.5 * sum(first.values())


def _gfl_loss_per_positive(model, targets, cls_logits, distributions, anchors):
    """GFL's losses computed as before they were batched: per image, its positives found by index and gathered."""
    from torchvision.ops import generalized_box_iou_loss

    from frs_cli.models.gfl import model as gfl
    from frs_cli.models.gfl.assign import atss_assign, box_centres
    from frs_cli.models.gfl.head import expected_distance
    from frs_cli.models.gfl.losses import (
        boxes_from_distances,
        distribution_focal_loss,
        paired_iou,
        quality_focal_loss,
        side_distances,
    )

    per_level = [t.shape[-2] * t.shape[-1] for t in cls_logits]
    logits, dists = gfl._flatten(cls_logits), gfl._flatten(distributions)
    strides = model._anchor_strides(per_level, logits.device)
    quality_target = torch.zeros_like(logits, dtype=torch.float32)
    pos_dist, pos_points, pos_strides, pos_gt = [], [], [], []
    for i, (a, t) in enumerate(zip(anchors, targets)):
        matched = atss_assign(a, per_level, t["boxes"], gfl.ATSS_TOPK)
        pos = torch.nonzero(matched >= 0).squeeze(1)
        if pos.numel() == 0:
            continue
        gt = t["boxes"][matched[pos]].float()
        points, s = box_centres(a[pos]), strides[pos]
        pred = boxes_from_distances(points, expected_distance(dists[i, pos], model.reg_max), s)
        quality_target[i, pos, t["labels"][matched[pos]]] = paired_iou(pred.detach(), gt)
        pos_dist.append(dists[i, pos])
        pos_points.append(points)
        pos_strides.append(s)
        pos_gt.append(gt)
    num_pos = max(1, sum(len(g) for g in pos_gt))
    qfl = quality_focal_loss(logits, quality_target, gfl.QFL_BETA).sum() / num_pos
    dist, points, s, gt = (torch.cat(x) for x in (pos_dist, pos_points, pos_strides, pos_gt))
    pred = boxes_from_distances(points, expected_distance(dist, model.reg_max), s)
    giou = generalized_box_iou_loss(pred, gt, reduction="sum") / num_pos
    target = side_distances(points, gt, s).clamp(min=0, max=model.reg_max - 0.01)
    dfl = distribution_focal_loss(dist.float().reshape(-1, model.reg_max + 1), target.reshape(-1)).sum() / num_pos
    return {"quality_focal": qfl, "giou": gfl.GIOU_WEIGHT * giou, "distribution_focal": gfl.DFL_WEIGHT * dfl}


def test_gfl_losses_batched_by_masks_equal_the_per_positive_losses_with_their_gradients(batch):
    """The GT loss picks the batch's positives by masks (no ``torch.nonzero``, which waits for the device once per
    image): the same three losses and gradients as gathering each image's positives by index, with an image that
    has no box and boxes of several sizes."""
    d = _tiny("gfl_tiny_fpn", anchor_size=16).train()
    core = d.core()
    targets = [batch.targets[0], {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
               {"boxes": torch.tensor([[2.0, 3.0, 60.0, 50.0], [30.0, 30.0, 40.0, 44.0]]),
                "labels": torch.tensor([1, 0])}]
    seen = {}

    def keep_inputs(targets, cls_logits, distributions, anchors):  # the head outputs the detector hands its loss
        seen.update(cls_logits=cls_logits, distributions=distributions, anchors=anchors)
        return {}

    core.compute_loss = keep_inputs
    with torch.no_grad():
        d(batch.images, batch.image_sizes, targets)
    del core.compute_loss
    cls_logits = [t.detach().requires_grad_() for t in seen["cls_logits"]]
    distributions = [t.detach().requires_grad_() for t in seen["distributions"]]
    anchors = seen["anchors"]
    results = []
    for loss in (core.compute_loss, lambda *a: _gfl_loss_per_positive(core, *a)):
        losses = loss(targets, cls_logits, distributions, anchors)
        grads = torch.autograd.grad(sum(losses.values()), [*cls_logits, *distributions])
        results.append((losses, grads))
    (ours, our_grads), (theirs, their_grads) = results
    assert all(float(theirs[k].detach()) > 0 for k in theirs)
    for key in ("quality_focal", "giou", "distribution_focal"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_gfl_with_no_boxes_has_only_the_classification_loss(batch):
    d = _tiny("gfl_tiny_fpn").train()
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 3
    with torch.no_grad():
        losses = d(batch.images, batch.image_sizes, empty).losses
    assert float(losses["quality_focal"]) > 0 and float(losses["giou"]) == 0 and float(losses["distribution_focal"]) == 0


# -- torchvision weights fit (layouts checked without any download) ---------------------------------------------

@pytest.mark.parametrize("arch,builder", [
    ("fcos_resnet50_fpn", "fcos_resnet50_fpn"),
    ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn"),
    ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"),
])
def test_torchvision_coco_weight_layout_loads_into_the_adapter(arch, builder):
    from torchvision.models import detection

    from frs_cli.models import load_state

    torch.manual_seed(0)
    tv = getattr(detection, builder)(weights=None, weights_backbone=None, num_classes=91)
    d = build_detector(ModelConfig(arch=arch), 91)  # label_map = "category_id" on COCO: 91 labels
    state = d.adapt_torchvision_state(tv.state_dict())
    load_state(d, state, "torchvision layout")  # raises on any missing, unexpected or misshapen entry
    if d.family == "faster_rcnn":  # label c (category id c) is torchvision's output c, at our output c + 1
        ours = d.core().roi_heads.box_predictor.cls_score
        theirs = tv.roi_heads.box_predictor.cls_score
        torch.testing.assert_close(ours.weight[2:], theirs.weight[1:])
        torch.testing.assert_close(ours.weight[0], theirs.weight[0])
        assert float(ours.bias[1].detach()) < -10 and not ours.weight[1].any()


# -- compatibility and phi -------------------------------------------------------------------------------------

@pytest.mark.parametrize("teacher,student,message", [
    ("fcos_small_fpn", "retinanet_tiny_fpn", "the teacher is a fcos detector, the student a retinanet"),
    ("fasterrcnn_small_fpn", "gfl_tiny_fpn", "the teacher is a faster_rcnn detector, the student a gfl"),
    ("gfl_small_fpn", "fcos_tiny_fpn", "the teacher is a gfl detector, the student a fcos"),
])
def test_teacher_and_student_of_different_families_are_refused(teacher, student, message):
    with pytest.raises(FrsError, match=message):
        check_distillable(ModelConfig(arch=student), ModelConfig(arch=teacher), K)


def test_faster_rcnn_levels_do_not_line_up_with_a_p3_to_p7_teacher():
    rpn = _tiny("fasterrcnn_tiny_fpn").signature
    other = FrsSignature("faster_rcnn", tuple(LevelSpec(f"P{i}", 2**i, 64) for i in range(3, 8)), 3)
    with pytest.raises(FrsError, match=r"student FPN levels \[\('P2', 4\).*do not line up"):
        check_compatible(rpn, other)


@pytest.mark.parametrize("family", ["fcos", "faster_rcnn", "gfl"])
def test_phi_maps_a_64_channel_student_onto_a_256_channel_teacher(batch, family):
    prefix = {"fcos": "fcos", "faster_rcnn": "fasterrcnn", "gfl": "gfl"}[family]
    teacher = _tiny(f"{prefix}_resnet18_fpn")
    student = _tiny(f"{prefix}_tiny_fpn")
    assert [lv.channels for lv in teacher.levels] == [256] * 5 and [lv.channels for lv in student.levels] == [64] * 5
    obj = FRSObjective(student, teacher.signature, OnlineTeacher(teacher), DistillConfig(warmup_iters=0))
    official = {"fcos": (0.01, 0.05), "faster_rcnn": (0.002, 0.1), "gfl": (0.1, 0.05)}[family]  # FRS.md
    assert (obj.cfg.alpha, obj.cfg.beta) == official  # left out of the config: the student family's weights
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in obj.adapters.convs] == [(64, 256, (3, 3))] * 5
    torch.manual_seed(0)
    losses = obj(batch, 0)
    assert float(losses["frs_feature"].detach()) > 0 and float(losses["frs_head"].detach()) > 0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in obj.adapters.convs)
