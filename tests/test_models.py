import pytest
import torch
from torchvision.models.detection.retinanet import RetinaNet

from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig
from frs_cli.errors import ModelError
from frs_cli.models import ARCHS, ModelConfig, build_cls_head, build_detector, model_fingerprint
from frs_cli.models.retinanet import to_head_layout
from frs_cli.train.checkpoint import atomic_save, load_detector, model_payload


@pytest.fixture
def batch(synth_root):
    ds = CocoViews.from_config(DataConfig(root=str(synth_root)), "train", GeometryConfig(64, 64, 32))
    return collate([ds[(i, "orig")] for i in range(3)])


def test_every_registered_arch_builds_with_its_family_levels():
    from torchvision.models.detection import FCOS, FasterRCNN

    from frs_cli.models.gfl import GFL

    cores = {"retinanet": RetinaNet, "fcos": FCOS, "faster_rcnn": FasterRCNN, "gfl": GFL}
    for name, spec in ARCHS.items():
        d = build_detector(ModelConfig(arch=name), num_classes=3)
        assert isinstance(d.core(), cores[spec.family]) and d.family == spec.family
        if spec.family == "faster_rcnn":
            assert d.level_names == ["P2", "P3", "P4", "P5", "P6"] and d.strides == [4, 8, 16, 32, 64]
        else:
            assert d.level_names == ["P3", "P4", "P5", "P6", "P7"] and d.strides == [8, 16, 32, 64, 128]
        assert d.num_classes == 3 and d.arch == name
        assert [lv.channels for lv in d.levels] == [spec.fpn_channels] * 5



def _nms_thresh(detector) -> float:
    core = detector.core()
    return core.roi_heads.nms_thresh if detector.family == "faster_rcnn" else core.nms_thresh


@pytest.mark.parametrize("arch, expected", [("gfl_tiny_fpn", 0.6), ("gfl_resnet50_fpn_mmdet", 0.6),
                                            ("fcos_resnet50_caffe_fpn_tricks_mmdet", 0.6), ("retinanet_tiny_fpn", 0.5),
                                            ("fcos_tiny_fpn", 0.5), ("fasterrcnn_tiny_fpn", 0.5)])
def test_nms_threshold_defaults_to_the_one_of_the_config_each_arch_mirrors(arch, expected):
    # mmdetection's test_cfg: 0.6 for GFL and the FCOS "tricks" config, 0.5 for RetinaNet, FCOS, Faster R-CNN
    assert ModelConfig().nms_thresh == 0 and ARCHS[arch].nms_iou() == expected
    assert _nms_thresh(build_detector(ModelConfig(arch=arch), num_classes=3, load_weights=False)) == expected
    assert _nms_thresh(build_detector(ModelConfig(arch=arch, nms_thresh=0.45), num_classes=3)) == 0.45

def test_adapter_returns_per_level_features_and_logits_in_head_layout(batch):
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16), 5).eval()
    with torch.no_grad():
        out = d(batch.images, batch.image_sizes, detect=False)
    assert [tuple(f.shape) for f in out.features] == [(3, 64, 8, 8), (3, 64, 4, 4), (3, 64, 2, 2), (3, 64, 1, 1),
                                                        (3, 64, 1, 1)]
    assert [tuple(c.shape) for c in out.cls_logits] == [(3, 45, h, w) for h, w in [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]]
    assert out.detections is None and out.losses == {}


def test_adapter_logits_are_torchvision_head_output_reordered(batch):
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_resnet18_fpn"), 5).eval()
    with torch.no_grad():
        out = d(batch.images, batch.image_sizes, detect=False)
        reference = d.core().head(out.features)["cls_logits"]  # (B, sum HWA, K), torchvision's own order
    torch.testing.assert_close(to_head_layout(out.cls_logits, 5), reference, rtol=0, atol=0)
    # channel a*K + k at (h, w) is anchor a, class k: check one element by hand
    h, w, a, k = 1, 2, 4, 3
    _H, W = out.cls_logits[0].shape[-2:]
    flat_index = (h * W + w) * 9 + a
    assert out.cls_logits[0][1, a * 5 + k, h, w] == reference[1, flat_index, k]


def test_adapter_gt_losses_equal_torchvision_forward_on_the_same_batch(batch):
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16), 5).train()
    ours = d(batch.images, batch.image_sizes, batch.targets).losses
    tv = d.core()
    tv.transform.min_size, tv.transform.max_size = (64,), 64  # 64x64 images: torchvision's resize is a no-op
    theirs = tv([im.float() / 255 for im in batch.images], batch.targets)
    assert set(ours) == set(theirs) == {"classification", "bbox_regression"}
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_adapter_detections_match_torchvision_inference(batch):
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16, score_thresh=0.0), 5).eval()
    tv = d.core()
    tv.transform.min_size, tv.transform.max_size = (64,), 64
    with torch.no_grad():
        ours = d(batch.images, batch.image_sizes).detections
        theirs = tv([im.float() / 255 for im in batch.images])
    for a, b in zip(ours, theirs):
        assert len(a["boxes"]) > 0
        # pixel coordinates of 64 px images: with one thread a box's corner differs by 1.1e-5 px, float32 rounding
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"])


def test_normalize_zeroes_batch_padding():
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 2)
    images = torch.full((2, 3, 64, 64), 200, dtype=torch.uint8)
    x = d.normalize(images, [(64, 64), (40, 32)])
    assert x[1, :, 40:, :].abs().sum() == 0 and x[1, :, :, 32:].abs().sum() == 0
    assert (x[1, :, :40, :32] != 0).all() and (x[0] != 0).all()


def test_rebuilt_cls_head_reproduces_the_detector_logits(batch):
    torch.manual_seed(0)
    for arch in ("retinanet_tiny_fpn", "retinanet_resnet18_fpn"):
        d = build_detector(ModelConfig(arch=arch, anchor_size=16), 5).eval()
        head = build_cls_head(d.cls_head_spec())
        head.load_state_dict(d.cls_head().state_dict())
        with torch.no_grad():
            out = d(batch.images, batch.image_sizes, detect=False)
            again = head(out.features)
        for a, b in zip(out.cls_logits, again):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unknown_arch_lists_the_valid_names():
    with pytest.raises(ModelError, match="unknown arch 'retinanet_resnet9'.*retinanet_resnet50_fpn_v2"):
        build_detector(ModelConfig(arch="retinanet_resnet9"), 3)


def test_torchvision_weights_of_another_class_count_are_refused_before_any_download():
    with pytest.raises(ModelError, match="predict 91 classes, the dataset has 5.*category_id"):
        build_detector(ModelConfig(arch="retinanet_resnet50_fpn", weights="RetinaNet_ResNet50_FPN_Weights.COCO_V1"), 5)


def test_unknown_weights_name_is_a_clear_error():
    with pytest.raises(ModelError, match="weights enum name or a checkpoint path"):
        build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights_backbone="ResNet18_Weights.NOPE"), 3)


def _save(tmp_path, arch, num_classes, name="m.pt"):
    from frs_cli.data.geometry import GeometryConfig

    torch.manual_seed(1)
    cfg = ModelConfig(arch=arch, anchor_size=16)
    d = build_detector(cfg, num_classes)
    path = tmp_path / name
    atomic_save(model_payload(d, cfg, list(range(1, num_classes + 1)), [f"c{i}" for i in range(num_classes)],
                              GeometryConfig(64, 64, 32)), path)
    return d, path


def test_checkpoint_round_trip_restores_weights_and_fingerprint(tmp_path):
    d, path = _save(tmp_path, "retinanet_tiny_fpn", 4)
    loaded, ckpt = load_detector(path)
    assert model_fingerprint(loaded) == model_fingerprint(d) == ckpt["fingerprint"]
    for (ka, a), (kb, b) in zip(d.core().state_dict().items(), loaded.core().state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    again = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16, weights=str(path)), 4)
    assert model_fingerprint(again) == ckpt["fingerprint"]


def test_checkpoint_of_another_arch_or_class_count_is_refused(tmp_path):
    _, path = _save(tmp_path, "retinanet_tiny_fpn", 4)
    with pytest.raises(ModelError, match="holds a retinanet_tiny_fpn, expected retinanet_small_fpn"):
        build_detector(ModelConfig(arch="retinanet_small_fpn", weights=str(path)), 4)
    with pytest.raises(ModelError, match="has 4 classes, the dataset has 6"):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(path)), 6)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(ModelError, match="expected a torch checkpoint .*, got text beginning 'hello'"):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(bad)), 4)
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match=r"expected an frs checkpoint \(keys 'arch', 'model'\) or a torchvision state "
                                         r"dict \(a tensor per parameter name\), got another file \(\['foo'\]\)"):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(tmp_path / "other.pt")), 4)
    mmdet = tmp_path / "retinanet_r50.pth"  # mmdetection's layout: the weights under state_dict, beside meta
    torch.save({"meta": {"mmdet_version": "2.25.0"}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, mmdet)
    with pytest.raises(ModelError, match=rf"it looks like an mmdetection checkpoint: frs convert mmdet {mmdet} "):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(mmdet)), 4)


def test_fingerprint_changes_with_any_weight():
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 3)
    before = model_fingerprint(d)
    assert model_fingerprint(d) == before
    with torch.no_grad():
        d.core().head.classification_head.cls_logits.bias[0] += 1e-3
    assert model_fingerprint(d) != before


@pytest.mark.parametrize("arch", ["retinanet_resnet18_fpn", "retinanet_tiny_fpn"])  # l1 box loss, giou box loss
def test_batched_gt_loss_equals_torchvision_compute_loss_with_empty_and_tiny_boxes(arch):
    from torchvision.models.detection.image_list import ImageList

    from frs_cli.models.retinanet_loss import retinanet_gt_loss

    torch.manual_seed(3)
    d = build_detector(ModelConfig(arch=arch, anchor_size=16), 4).train()
    core = d.core()
    size = 96
    images = torch.rand(4, 3, size, size)
    xy = torch.rand(4, 7, 2) * 70
    wh = torch.cat([torch.rand(4, 7, 2) * 40 + 2, torch.full((4, 1, 2), 1.5)], 1)[:, :7]  # one 1.5-px box each
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=2)
    targets = [
        {"boxes": boxes[0], "labels": torch.randint(0, 4, (7,))},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
        {"boxes": boxes[2, :1], "labels": torch.tensor([3])},
        {"boxes": boxes[3, :5], "labels": torch.randint(0, 4, (5,))},
    ]
    features = list(core.backbone(images).values())
    heads = core.head(features)
    anchors = core.anchor_generator(ImageList(images, [(size, size)] * 4), features)
    theirs = core.compute_loss(targets, heads, anchors)
    ours = retinanet_gt_loss(core, targets, heads["cls_logits"], heads["bbox_regression"], anchors[0])
    assert theirs["classification"] > 0 and theirs["bbox_regression"] > 0
    for key in ("classification", "bbox_regression"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7)
    # the same number of foreground anchors: check the matcher directly against torchvision's
    from torchvision.ops import box_iou

    from frs_cli.models.retinanet_loss import batched_box_iou, match_anchors, pad_targets

    padded, _, valid = pad_targets(targets, images.device)
    matched = match_anchors(batched_box_iou(padded, anchors[0]), valid)
    for i, t in enumerate(targets):
        expected = (torch.full_like(matched[i], -1) if len(t["boxes"]) == 0
                    else core.proposal_matcher(box_iou(t["boxes"], anchors[i])))
        assert torch.equal(matched[i], expected)


def test_batched_gt_loss_keeps_the_box_coders_weights_on_the_device_instead_of_copying_them_each_step(monkeypatch):
    """torchvision's ``BoxCoder.encode_single`` copies the coder's weights from the host at every call, which on a
    GPU makes the host wait for the device mid-step; the batched loss encodes with ``encode_boxes`` and weights
    made once per dtype and device, to the same deltas."""
    from torchvision.models.detection._utils import BoxCoder

    from frs_cli.models import retinanet_loss

    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt, anchors = torch.tensor([[4.0, 6.0, 40.0, 30.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    expected = coder.encode_single(gt, anchors)
    retinanet_loss.coder_weights.cache_clear()
    weights = retinanet_loss.coder_weights((10.0, 10.0, 5.0, 5.0), torch.float32, torch.device("cpu"))
    torch.testing.assert_close(retinanet_loss.encode_boxes(gt, anchors, weights), expected, rtol=0, atol=0)

    def no_copying_encoder(self, *args):
        raise AssertionError("encode_single copies the weights from the host")

    monkeypatch.setattr(BoxCoder, "encode_single", no_copying_encoder)
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_resnet18_fpn", anchor_size=16), 3).train()
    assert d.core().head.regression_head._loss_type == "l1"  # the v1 heads' box loss, the one that encodes
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    retinanet_loss.coder_weights.cache_clear()
    for _ in range(3):
        losses = d(torch.rand(2, 3, 64, 64), [(64, 64)] * 2, targets).losses
        assert losses["bbox_regression"] > 0
    info = retinanet_loss.coder_weights.cache_info()
    assert (info.misses, info.hits) == (1, 2)  # made by the first step, reused by the next two


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_giou_losss_decoding_is_torchvisions_without_copying_from_the_host(monkeypatch, dtype):
    """The v2 heads' GIoU box loss decodes the predicted deltas with ``decode_deltas``: the numbers of
    torchvision's ``BoxCoder.decode_single`` (large deltas clipped, anchors in the deltas' dtype), which copies two
    one-element tensors from the host at every call; the loss no longer calls it."""
    from torchvision.models.detection._utils import BoxCoder

    from frs_cli.models.retinanet_loss import decode_deltas

    torch.manual_seed(0)
    xy = torch.rand(64, 2) * 500
    anchors = torch.cat([xy, xy + torch.rand(64, 2) * 200 + 1], 1)
    deltas = (torch.randn(64, 4) * 3).to(dtype)
    deltas[0, 2:] = 20.0  # beyond the coder's clip of log(1000/16)
    for coder in (BoxCoder((1.0, 1.0, 1.0, 1.0)), BoxCoder((10.0, 10.0, 5.0, 5.0))):
        ours, theirs = decode_deltas(coder, deltas, anchors), coder.decode_single(deltas, anchors)
        assert ours.dtype == theirs.dtype == dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    def no_copying_decoder(self, *args):
        raise AssertionError("decode_single copies from the host")

    monkeypatch.setattr(BoxCoder, "decode_single", no_copying_decoder)
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16), 3).train()
    assert d.core().head.regression_head._loss_type == "giou"
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    assert d(torch.rand(2, 3, 64, 64), [(64, 64)] * 2, targets).losses["bbox_regression"] > 0


def test_the_shared_doubling_anchors_are_torchvision_s_and_mmdetection_s():
    from torchvision.models.detection import faster_rcnn, retinanet

    from frs_cli.models.anchors import GridAnchors, doubling_anchors

    # torchvision's own defaults: RetinaNet 3 octave scales x 3 ratios from 32 px, Faster R-CNN's RPN one size
    rn, tv = doubling_anchors(32, (0.5, 1.0, 2.0), scales_per_octave=3), retinanet._default_anchorgen()
    assert (rn.sizes, rn.aspect_ratios) == (tv.sizes, tv.aspect_ratios)
    rpn, tv = doubling_anchors(32, (0.5, 1.0, 2.0)), faster_rcnn._default_anchorgen()
    assert (rpn.sizes, rpn.aspect_ratios) == (tv.sizes, tv.aspect_ratios)
    assert doubling_anchors(8).sizes == ((8,), (16,), (32,), (64,), (128,))  # FCOS points: size = stride
    # mmdetection's: unrounded sizes on the nominal strides (octave base scale 4 for RetinaNet)
    mm = doubling_anchors(32, (1.0,), scales_per_octave=3, strides=(8, 16, 32, 64, 128), offset=0.5)
    assert isinstance(mm, GridAnchors) and mm.strides == (8, 16, 32, 64, 128) and mm.offset == 0.5
    assert mm.sizes[1] == (64.0, 64 * 2 ** (1 / 3), 64 * 2 ** (2 / 3))


@pytest.mark.parametrize("arch", ["retinanet_tiny_fpn", "fcos_tiny_fpn", "fasterrcnn_tiny_fpn", "gfl_tiny_fpn"])
def test_training_under_bf16_autocast_matches_against_float32_anchors(arch, monkeypatch):
    # the FPN outputs are bf16 under autocast and the anchor generators make their anchors in the maps' dtype:
    # 8-px steps above 1024 px. The anchors the GT loss takes must be the float32 ones whatever the precision.
    from frs_cli.models.base import DensePass

    seen = []
    made = DensePass.anchors

    def spy(self, generator):
        seen.append(made(self, generator))
        return seen[-1]

    monkeypatch.setattr(DensePass, "anchors", spy)
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch=arch), 3).train()
    images = torch.randint(0, 255, (2, 3, 1088, 1344), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[1100.0, 900.0, 1300.0, 1050.0]]), "labels": torch.tensor([1])}] * 2
    with torch.no_grad():
        d(images, [(1088, 1344), (1000, 1200)], targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d(images, [(1088, 1344), (1000, 1200)], targets)
    exact, under_amp = seen
    assert all(a.dtype == torch.float32 for a in exact + under_amp)
    assert exact[0].abs().max() > 1024  # large enough for bf16 to round them
    for a, b in zip(exact, under_amp, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
