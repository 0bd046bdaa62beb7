"""``frs convert mmdet`` without mmdetection: the key mapping against state dicts laid out as mmdetection's
models lay theirs out (mmdetection 3.x: ``backbone.*`` as torchvision's ResNet, ``neck.lateral_convs.i.conv``,
``neck.fpn_convs.i.conv`` with the extra levels after the outputs, the heads' own names), and the adapters'
mmdetection layouts (caffe stride, pixel normalisation, anchors). Parity with mmdetection itself:
test_mmdet_parity.py (the ``mmdet`` extra).
"""

from __future__ import annotations

import functools
import json
import math
import os

import pytest
import torch
from torch.testing import assert_close
from torchvision.models import resnet50
from torchvision.models.detection.image_list import ImageList
from typer.testing import CliRunner

from frs_cli.cli.app import app
from frs_cli.errors import ModelError
from frs_cli.models.mmdet_convert import COCO_CATEGORY_IDS

runner = CliRunner()


@functools.lru_cache(maxsize=1)
def _r50_body() -> dict:
    # mmdetection's ResNet names its parameters as torchvision's does (conv1, bn1, layerN.i.convK / bnK / downsample)
    return {f"backbone.{k}": v for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}


def _conv(g, out_ch, in_ch, k, bias=True) -> dict:
    d = {"weight": torch.randn(out_ch, in_ch, k, k, generator=g) * 0.01}
    if bias:
        d["bias"] = torch.randn(out_ch, generator=g) * 0.01
    return d


def _put(state, prefix, params):
    state.update({f"{prefix}.{k}": v for k, v in params.items()})


def mmdet_state(family: str, num_classes: int = 80, seed: int = 0, conv_bias: bool = False) -> dict:
    """A random R50 state dict under mmdetection's names for ``family`` (the 3.x configs of the paper's models)."""
    g = torch.Generator().manual_seed(seed)
    state = dict(_r50_body())
    inputs = [256, 512, 1024, 2048] if family == "faster_rcnn" else [512, 1024, 2048]
    for i, c in enumerate(inputs):
        _put(state, f"neck.lateral_convs.{i}.conv", _conv(g, 256, c, 1))
        _put(state, f"neck.fpn_convs.{i}.conv", _conv(g, 256, 256, 3))
    if family != "faster_rcnn":  # P6 from C5 (RetinaNet, 'on_input') or from P5 ('on_output'), then P7
        _put(state, f"neck.fpn_convs.{len(inputs)}.conv", _conv(g, 256, 2048 if family == "retinanet" else 256, 3))
        _put(state, f"neck.fpn_convs.{len(inputs) + 1}.conv", _conv(g, 256, 256, 3))
    for branch in ("cls", "reg"):
        for i in range(4 if family != "faster_rcnn" else 0):
            if family == "retinanet":
                _put(state, f"bbox_head.{branch}_convs.{i}.conv", _conv(g, 256, 256, 3))
            else:  # ConvModule(conv, GN): no conv bias unless the config asks for one
                _put(state, f"bbox_head.{branch}_convs.{i}.conv", _conv(g, 256, 256, 3, bias=conv_bias))
                _put(state, f"bbox_head.{branch}_convs.{i}.gn", {"weight": 1 + torch.randn(256, generator=g) * 0.1,
                                                                 "bias": torch.randn(256, generator=g) * 0.1})
    k = num_classes
    if family == "retinanet":
        _put(state, "bbox_head.retina_cls", _conv(g, 9 * k, 256, 3))
        _put(state, "bbox_head.retina_reg", _conv(g, 36, 256, 3))
    elif family in ("fcos", "gfl"):
        name = "conv" if family == "fcos" else "gfl"
        _put(state, f"bbox_head.{name}_cls", _conv(g, k, 256, 3))
        _put(state, f"bbox_head.{name}_reg", _conv(g, 4 if family == "fcos" else 68, 256, 3))
        for i in range(5):
            state[f"bbox_head.scales.{i}.scale"] = torch.tensor(1.0 + i / 10)
        if family == "fcos":
            _put(state, "bbox_head.conv_centerness", _conv(g, 1, 256, 3))
        else:
            state["bbox_head.integral.project"] = torch.arange(17, dtype=torch.float32)
    else:
        _put(state, "rpn_head.rpn_conv", _conv(g, 256, 256, 3))
        _put(state, "rpn_head.rpn_cls", _conv(g, 3, 256, 1))
        _put(state, "rpn_head.rpn_reg", _conv(g, 12, 256, 1))
        state["roi_head.bbox_head.shared_fcs.0.weight"] = torch.randn(1024, 256 * 7 * 7, generator=g) * 0.001
        state["roi_head.bbox_head.shared_fcs.0.bias"] = torch.zeros(1024)
        state["roi_head.bbox_head.shared_fcs.1.weight"] = torch.randn(1024, 1024, generator=g) * 0.01
        state["roi_head.bbox_head.shared_fcs.1.bias"] = torch.zeros(1024)
        state["roi_head.bbox_head.fc_cls.weight"] = torch.randn(k + 1, 1024, generator=g)
        state["roi_head.bbox_head.fc_cls.bias"] = torch.arange(k + 1, dtype=torch.float32)
        state["roi_head.bbox_head.fc_reg.weight"] = torch.randn(4 * k, 1024, generator=g)
        state["roi_head.bbox_head.fc_reg.bias"] = torch.arange(4 * k, dtype=torch.float32)
    return state


def _convert(tmp_path, family, arch, state=None, options=(), **kw):
    state = mmdet_state(family, **kw) if state is None else state
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": state}, tmp_path / "in.pth")
    result = runner.invoke(app, ["convert", "mmdet", str(tmp_path / "in.pth"), "--arch", arch,
                                 "--out", str(tmp_path / "out.pt"), *map(str, options)])
    return state, result


def _load(tmp_path):
    from frs_cli.train.checkpoint import load_detector

    return load_detector(tmp_path / "out.pt")


@functools.cache
def _detector(arch: str):
    """One randomly initialised adapter per arch for the whole module (building an R50 is the slow part)."""
    from frs_cli.models import ModelConfig, build_detector

    return build_detector(ModelConfig(arch=arch), 80, load_weights=False)


def _mapped(family: str, arch: str, **kw) -> tuple[dict, dict]:
    from frs_cli.models.mmdet_convert import to_adapter_state

    state = mmdet_state(family, **kw)
    return state, to_adapter_state(state, family, _detector(arch).core().state_dict())


def test_convert_mmdet_retinanet_writes_a_model_file_frs_loads(tmp_path):
    state, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet")
    assert result.exit_code == 0, result.output
    assert "80 classes" in result.output
    detector, ckpt = _load(tmp_path)
    assert (ckpt["arch"], ckpt["num_classes"]) == ("retinanet_resnet50_fpn_mmdet", 80)
    assert ckpt["label_to_category"] == list(COCO_CATEGORY_IDS) and ckpt["category_names"][0] == "person"
    assert ckpt["geometry"] == {"min_size": 800, "max_size": 1333, "size_divisible": 32}
    assert ckpt["model_config"]["nms_thresh"] == 0.5 and ckpt["converted_from"]["file"] == "in.pth"
    core = detector.core()
    assert torch.equal(core.head.classification_head.cls_logits.weight, state["bbox_head.retina_cls.weight"])
    assert torch.equal(core.head.regression_head.conv[3][0].bias, state["bbox_head.reg_convs.3.conv.bias"])
    assert torch.equal(core.backbone.fpn.extra_blocks.p6.weight, state["neck.fpn_convs.3.conv.weight"])
    assert torch.equal(core.backbone.fpn.layer_blocks[2][0].weight, state["neck.fpn_convs.2.conv.weight"])
    assert torch.equal(core.backbone.body.layer3[5].bn2.running_var, state["backbone.layer3.5.bn2.running_var"])
    detector.eval()
    with torch.no_grad():
        out = detector(torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8), [(64, 96)], detect=True)
    assert [tuple(f.shape[-2:]) for f in out.features] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert out.cls_logits[0].shape == (1, 720, 8, 12) and out.detections is not None


def test_convert_mmdet_faster_rcnn_moves_background_to_row_zero(tmp_path):
    state, out = _mapped("faster_rcnn", "fasterrcnn_resnet50_fpn_mmdet")
    pred = "roi_heads.box_predictor."
    assert_close(out[pred + "cls_score.bias"], torch.tensor([80.0, *range(80)]))  # background (row 80) first
    assert torch.equal(out[pred + "cls_score.weight"][1:], state["roi_head.bbox_head.fc_cls.weight"][:80])
    assert torch.equal(out[pred + "bbox_pred.bias"], torch.cat([torch.zeros(4), torch.arange(320.0)]))
    assert torch.equal(out["rpn.head.cls_logits.weight"], state["rpn_head.rpn_cls.weight"])
    assert torch.equal(out["rpn.head.conv.0.0.bias"], state["rpn_head.rpn_conv.bias"])
    assert torch.equal(out["backbone.fpn.inner_blocks.0.0.weight"], state["neck.lateral_convs.0.conv.weight"])
    assert torch.equal(out["roi_heads.box_head.fc7.weight"], state["roi_head.bbox_head.shared_fcs.1.weight"])


def test_convert_mmdet_fcos_gathers_scales_and_zeroes_gn_conv_bias(tmp_path):
    arch = "fcos_resnet50_caffe_fpn_mmdet"
    state, out = _mapped("fcos", arch)
    assert_close(out["head.scales"], torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4]))
    tower = "head.classification_head.conv."  # (conv, GN, ReLU) x 4
    assert torch.equal(out[tower + "9.weight"], state["bbox_head.cls_convs.3.conv.weight"])
    assert torch.equal(out[tower + "9.bias"], torch.zeros(256))
    assert torch.equal(out[tower + "10.weight"], state["bbox_head.cls_convs.3.gn.weight"])
    assert torch.equal(out["head.regression_head.conv.4.bias"], state["bbox_head.reg_convs.1.gn.bias"])
    assert torch.equal(out["head.regression_head.bbox_ctrness.weight"], state["bbox_head.conv_centerness.weight"])
    assert torch.equal(out["backbone.fpn.extra_blocks.p6.weight"], state["neck.fpn_convs.3.conv.weight"])
    assert _detector(arch).bgr and _detector(arch).core().backbone.body.layer2[0].conv1.stride == (2, 2)


def test_convert_mmdet_fcos_keeps_conv_bias_of_the_tricks_layout(tmp_path):
    from frs_cli.convert import mmdet_test_nms

    arch = "fcos_resnet50_caffe_fpn_tricks_mmdet"
    state, out = _mapped("fcos", arch, conv_bias=True)
    assert torch.equal(out["head.regression_head.conv.3.bias"], state["bbox_head.reg_convs.1.conv.bias"])
    assert mmdet_test_nms(arch) == 0.6 and mmdet_test_nms("fcos_resnet50_caffe_fpn_mmdet") == 0.5  # test_cfg
    assert _detector(arch).norm_on_bbox and _detector(arch).centerness_on_reg
    assert not _detector("fcos_resnet50_caffe_fpn_mmdet").centerness_on_reg


def test_convert_mmdet_gfl_maps_distribution_head_and_scales(tmp_path):
    from frs_cli.convert import mmdet_test_nms
    from frs_cli.models.mmdet_convert import to_adapter_state

    state, out = _mapped("gfl", "gfl_resnet50_fpn_mmdet")
    assert torch.equal(out["head.box.distribution.weight"], state["bbox_head.gfl_reg.weight"])
    assert torch.equal(out["head.classification.logits.bias"], state["bbox_head.gfl_cls.bias"])
    assert torch.equal(out["head.box.tower.4.bias"], state["bbox_head.reg_convs.1.gn.bias"])
    assert torch.equal(out["head.box.tower.3.bias"], torch.zeros(256))
    assert_close(out["head.box.scales"], torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4]))
    assert "integral.project" not in out and mmdet_test_nms("gfl_resnet101_fpn_mmdet") == 0.6
    state["bbox_head.integral.project"] = torch.arange(17.0) / 2
    with pytest.raises(ModelError, match="expected GFL bin positions 0..16"):
        to_adapter_state(state, "gfl", _detector("gfl_resnet50_fpn_mmdet").core().state_dict())


def test_convert_mmdet_names_unknown_and_missing_keys_and_writes_nothing(tmp_path):
    state = mmdet_state("retinanet")
    state["bbox_head.retina_iou.weight"] = torch.zeros(9, 256, 3, 3)
    del state["neck.fpn_convs.4.conv.bias"]
    _, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", state=state)
    assert result.exit_code == 1
    assert "1 unknown: bbox_head.retina_iou.weight" in result.output
    assert "1 missing (adapter keys nothing in the checkpoint fills): backbone.fpn.extra_blocks.p7.bias" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_convert_mmdet_names_a_misshapen_key_by_the_checkpoints_name(tmp_path):
    state = mmdet_state("retinanet")
    state["neck.fpn_convs.1.conv.weight"] = torch.zeros(256, 256, 1, 1)
    _, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", state=state)
    assert result.exit_code == 1
    assert "1 of another shape: neck.fpn_convs.1.conv.weight (256, 256, 1, 1) (expected (256, 256, 3, 3))" in \
        result.output, result.output
    assert not (tmp_path / "out.pt").exists()


def test_convert_mmdet_refuses_an_out_below_a_file_or_equal_to_the_checkpoint_in_one_line(tmp_path):
    """Before: a traceback (FileExistsError from the folder's mkdir), and the source checkpoint silently replaced
    by the frs file."""
    _, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet")
    assert result.exit_code == 0, result.output
    source = tmp_path / "in.pth"
    before = source.read_bytes()
    for out, expected in ((source / "x.pt", f"expected a folder at {str(source)!r} to hold"),
                          (source, "expected a new file, got the checkpoint being converted"),
                          (tmp_path / "x.onnx", ("expected the name of an frs model file (PyTorch's format, such "
                                                f"as model.pt), got an ONNX name {str(tmp_path / 'x.onnx')!r} "
                                                "(write model.pt, then frs export --onnx"))):
        result = runner.invoke(app, ["convert", "mmdet", str(source), "--arch", "retinanet_resnet50_fpn_mmdet",
                                     "--out", str(out)])
        assert result.exit_code == 1 and result.stderr.startswith(f"error: convert mmdet --out: {expected}"), \
            result.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert source.read_bytes() == before


def test_convert_mmdet_on_a_full_disk_is_one_line_whose_hint_is_to_run_again_not_to_resume(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to make writes fail as on a full disk")
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": mmdet_state("retinanet")}, tmp_path / "in.pth")
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: save(obj, "/dev/full", *a, **k))
    result = runner.invoke(app, ["convert", "mmdet", str(tmp_path / "in.pth"), "--arch", "retinanet_resnet50_fpn_mmdet",
                                 "--out", str(tmp_path / "out.pt")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {tmp_path / 'out.pt'}: writing failed (")
    assert lines[0].endswith(" (free space, then run again)")  # no earlier out.pt to keep: none promised
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth"]  # no temporary file, no model file


def _annotations(path, categories) -> str:
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return str(path)


def test_convert_mmdet_maps_the_labels_of_a_checkpoint_not_of_cocos_80_to_the_categories_given(tmp_path):
    # listed out of id order: label i is the i-th category in id order, as mmdetection's CocoDataset numbers them
    ann = _annotations(tmp_path / "ann.json", [(20, "e"), (3, "a"), (9, "c"), (7, "b"), (11, "d")])
    _, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", num_classes=5,
                         options=["--categories", ann])
    assert result.exit_code == 0, result.output
    assert "5 classes" in result.output
    _, ckpt = _load(tmp_path)
    assert ckpt["num_classes"] == 5
    assert ckpt["label_to_category"] == [3, 7, 9, 11, 20] and ckpt["category_names"] == ["a", "b", "c", "d", "e"]


def test_convert_mmdet_refuses_labels_it_cannot_map_and_writes_nothing(tmp_path):
    def one_line(result) -> str:
        assert result.exit_code == 1 and not (tmp_path / "out.pt").exists()
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    line = one_line(_convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", num_classes=5)[1])
    assert line.startswith("error: convert mmdet: expected COCO's 80 classes or --categories, got a checkpoint of 5 "
                           "classes, whose labels name no category ids (pass --categories with the annotation file")
    three = _annotations(tmp_path / "three.json", [(1, "a"), (2, "b"), (3, "c")])
    line = one_line(_convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", num_classes=5,
                             options=["--categories", three])[1])
    assert line == (f"error: convert mmdet --categories: expected 5 categories, one per class of the checkpoint, "
                    f"got 3 in {three!r}")
    line = one_line(_convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", num_classes=5,
                             options=["--categories", tmp_path / "none.json"])[1])
    assert "expected a COCO JSON file at" in line and "none.json" in line and "does not exist" in line


def test_convert_mmdet_names_a_torchvision_file_and_a_class_layer_not_of_anchors_x_classes_rows(tmp_path):
    from frs_cli.models import ModelConfig, build_detector

    core = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 3, load_weights=False).core()
    _, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", state=core.state_dict())
    assert result.exit_code == 1 and not (tmp_path / "out.pt").exists()
    assert "expected an mmdetection checkpoint, got torchvision's layout (keys such as 'backbone.body." in result.output
    assert "needs no conversion: name it as teacher.weights" in result.output
    state = mmdet_state("retinanet")
    state["bbox_head.retina_cls.weight"] = state["bbox_head.retina_cls.weight"][:100]
    state["bbox_head.retina_cls.bias"] = state["bbox_head.retina_cls.bias"][:100]
    _, result = _convert(tmp_path, "retinanet", "retinanet_resnet50_fpn_mmdet", state=state)
    assert result.exit_code == 1 and not (tmp_path / "out.pt").exists()
    assert len(result.output.strip().splitlines()) == 1
    assert ("expected 'bbox_head.retina_cls.weight' to have 9 anchors x classes rows (a multiple of 9), got 100"
            in result.output)


def test_convert_mmdet_refuses_a_checkpoint_of_another_detector(tmp_path):
    gfl_head = {"bbox_head.gfl_cls.weight": torch.zeros(80, 256, 3, 3)}
    _, result = _convert(tmp_path, "gfl", "retinanet_resnet50_fpn_mmdet", state=gfl_head)
    assert result.exit_code == 1
    assert "expected the retinanet key 'bbox_head.retina_cls.weight'" in result.output
    _, result = _convert(tmp_path, "gfl", "gfl_resnet50_fpn", state=gfl_head)  # frs's own GFL: not mmdetection's
    assert result.exit_code == 1 and "expected an mmdetection layout for --arch" in result.output
    assert not (tmp_path / "out.pt").exists()


def test_read_mmdet_state_refuses_pickled_objects_unless_allowed(tmp_path):
    from frs_cli.models.mmdet_convert import read_mmdet_state

    torch.save({"state_dict": {"a": torch.ones(1)}, "meta": {"hook": ModelError("x")}}, tmp_path / "p.pth")
    with pytest.raises(ModelError, match="--allow-pickle"):
        read_mmdet_state(tmp_path / "p.pth")
    assert read_mmdet_state(tmp_path / "p.pth", allow_pickle=True).keys() == {"a"}
    with pytest.raises(ModelError, match="does not exist"):
        read_mmdet_state(tmp_path / "none.pth")


def test_caffe_style_moves_the_stride_to_the_first_conv():
    from frs_cli.models.backbones import to_caffe_style

    net = resnet50()
    to_caffe_style(net)
    for layer in (net.layer2, net.layer3, net.layer4):
        assert (layer[0].conv1.stride, layer[0].conv2.stride) == ((2, 2), (1, 1))
    assert (net.layer1[0].conv1.stride, net.layer1[0].conv2.stride) == ((1, 1), (1, 1))
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_caffe_arch_feeds_bgr_minus_detectron_mean():
    from frs_cli.models import ModelConfig, build_detector

    detector = build_detector(ModelConfig(arch="fcos_resnet50_caffe_fpn_mmdet"), 3, load_weights=False)
    img = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    x = detector.normalize(img, [(2, 1)])
    assert_close(x[0, :, 0, 0], torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]))
    assert torch.equal(x[0, :, :, 1], torch.zeros(3, 2))  # padding stays exactly zero


def test_grid_anchors_are_unrounded_and_on_nominal_strides():
    from frs_cli.models.anchors import GridAnchors, octave_anchors

    gen = octave_anchors((8, 16, 32, 64, 128), 4, 3, (0.5, 1.0, 2.0))
    fmaps = [torch.zeros(1, 1, math.ceil(800 / s), math.ceil(1216 / s)) for s in (8, 16, 32, 64, 128)]
    anchors = gen(ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)]), fmaps)[0]
    assert anchors.shape == (sum(f.shape[-1] * f.shape[-2] for f in fmaps) * 9, 4)
    w, h = 32 * math.sqrt(2), 32 / math.sqrt(2)  # ratio 0.5 (h / w), first size 32 at P3, position (0, 0)
    assert_close(anchors[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    assert_close(anchors[1, 2] - anchors[1, 0], torch.tensor(32 * 2 ** (1 / 3) * math.sqrt(2)))  # not rounded
    p7 = anchors[-9 * 7 * 10:].view(7, 10, 9, 4)
    assert_close((p7[1, 1, 4, :2] + p7[1, 1, 4, 2:]) / 2, torch.tensor([128.0, 128.0]))  # not 1216 // 10 = 121
    points = GridAnchors(((8.0,),), ((1.0,),), (8,), offset=0.5)
    first = points(ImageList(torch.zeros(1, 3, 16, 16), [(16, 16)]), [torch.zeros(1, 1, 2, 2)])[0][0]
    assert_close(first, torch.tensor([0.0, 0.0, 8.0, 8.0]))  # centre (4, 4): FCOS points at (x + 0.5) * stride


def test_mmdet_fcos_box_regression_follows_scales_and_norm_on_bbox():
    plain = _detector("fcos_resnet50_fpn_mmdet")
    tricks = _detector("fcos_resnet50_caffe_fpn_tricks_mmdet")
    towers = [torch.randn(1, 256, 2, 2) for _ in range(5)]
    for d in (plain, tricks):
        with torch.no_grad():
            d.core().head.scales.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5]))
            d.core().head.regression_head.bbox_reg.load_state_dict(plain.core().head.regression_head.bbox_reg.state_dict())
    raw = [plain.core().head.regression_head.bbox_reg(t) for t in towers]
    with torch.no_grad():
        got_plain, got_tricks = plain._box_regression(towers), tricks._box_regression(towers)
    for lv, (s, stride) in enumerate(zip([0.5, 1.0, 1.5, 2.0, 2.5], [8, 16, 32, 64, 128])):
        assert_close(got_plain[lv], (s * raw[lv]).exp() / stride)  # exp(scale x) px, in strides
        assert_close(got_tricks[lv], (s * raw[lv]).clamp(min=0))  # relu(scale x) strides


def test_convert_mmdet_names_a_truncated_copy_an_frs_model_file_and_a_dict_of_other_things(tmp_path, synth_root):
    """Files a user may hand ``convert mmdet`` by mistake: each one line saying what it is (before: torch's cut-off
    zip error, and "expected a dict of tensors ..., got dict" for an frs file and for a dict of other values)."""
    from conftest import save_random_model

    def convert(path):
        return runner.invoke(app, ["convert", "mmdet", str(path), "--arch", "retinanet_resnet50_fpn_mmdet",
                                   "--out", str(tmp_path / "out.pt")])

    torch.save({"state_dict": mmdet_state("retinanet")}, tmp_path / "in.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "in.pth").read_bytes()[:4096])
    result = convert(tmp_path / "cut.pth")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert (f"mmdet checkpoint '{tmp_path / 'cut.pth'}': expected a torch checkpoint (a zip archive written by "
            "torch.save), got a damaged or truncated zip archive (a truncated copy reads like this") in result.output
    save_random_model(tmp_path / "frs.pt", "retinanet_tiny_fpn", synth_root)
    result = convert(tmp_path / "frs.pt")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "expected an mmdetection checkpoint, got an frs model file (arch 'retinanet_tiny_fpn')" in result.output
    assert "name the file as teacher.weights or student.weights" in result.output
    torch.save({"state_dict": {"a": torch.ones(1), "epoch": 3}}, tmp_path / "mixed.pth")
    result = convert(tmp_path / "mixed.pth")
    assert "got a dict whose 1 of 2 values are not tensors (e.g. 'epoch')" in result.output
    assert not (tmp_path / "out.pt").exists()


def test_convert_mmdet_of_a_checkpoint_holding_objects_of_a_package_not_installed_reads_its_tensors(tmp_path,
                                                                                                    monkeypatch):
    """An mmdetection 3 checkpoint holds mmengine's objects (its message_hub) beside the weights. With
    --allow-pickle they are read as stand-ins, so no mmengine is needed (before: 'No module named mmengine', and
    the hint asked whether it was an mmdetection file); without it, the hint names --allow-pickle."""
    import sys
    import types

    fake = types.ModuleType("frs_absent_engine")

    class HistoryBuffer:
        def __init__(self):
            self.values = [1.0, 2.0]

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = "frs_absent_engine", "HistoryBuffer"
    fake.HistoryBuffer = HistoryBuffer
    monkeypatch.setitem(sys.modules, "frs_absent_engine", fake)
    state = mmdet_state("retinanet")
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": state,
                "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, tmp_path / "in.pth")
    monkeypatch.delitem(sys.modules, "frs_absent_engine")  # the package is not installed where frs runs
    args = ["convert", "mmdet", str(tmp_path / "in.pth"), "--arch", "retinanet_resnet50_fpn_mmdet", "--out",
            str(tmp_path / "out.pt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "pass --allow-pickle" in result.output, result.output
    result = runner.invoke(app, [*args, "--allow-pickle"])
    assert result.exit_code == 0, result.output
    detector, _ = _load(tmp_path)
    assert torch.equal(detector.core().head.classification_head.cls_logits.weight,
                       state["bbox_head.retina_cls.weight"])


def test_convert_mmdet_of_a_text_file_is_not_called_a_truncated_copy(tmp_path):
    (tmp_path / "notes.pth").write_text("hello\n")
    result = runner.invoke(app, ["convert", "mmdet", str(tmp_path / "notes.pth"), "--arch",
                                 "retinanet_resnet50_fpn_mmdet", "--out", str(tmp_path / "out.pt")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "got text beginning 'hello' (check the path: this file is no torch checkpoint)" in result.output
    assert "truncated" not in result.output
