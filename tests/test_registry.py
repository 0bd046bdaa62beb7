"""The family registry declares what the adapters build: signatures without building a detector."""

from __future__ import annotations

import pytest
import torch

from frs_cli import models
from frs_cli.archs import FAMILIES, default_anchor_size, signature
from frs_cli.errors import FrsError, ModelError
from frs_cli.models import ARCHS, ModelConfig, build_detector, check_distillable


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_declared_signature_is_what_the_adapter_builds(arch):
    with torch.device("meta"):  # the architecture only: no memory, no init work
        built = build_detector(ModelConfig(arch=arch), 7, load_weights=False)
    assert signature(arch, 7) == built.signature


def test_declarations_hold_the_papers_channel_sets():
    retina = signature("retinanet_resnet50_fpn", 80)
    assert [(lv.name, lv.stride, lv.channels) for lv in retina.levels] == [
        ("P3", 8, 256), ("P4", 16, 256), ("P5", 32, 256), ("P6", 64, 256), ("P7", 128, 256)]
    assert retina.cls_channels == 9 * 80  # anchors x classes
    rpn = signature("fasterrcnn_tiny_fpn", 80)
    assert [(lv.name, lv.stride, lv.channels) for lv in rpn.levels] == [
        ("P2", 4, 64), ("P3", 8, 64), ("P4", 16, 64), ("P5", 32, 64), ("P6", 64, 64)]
    assert rpn.cls_channels == 3  # the RPN objectness, whatever the class count
    assert signature("fcos_tiny_fpn", 5).cls_channels == signature("gfl_tiny_fpn", 5).cls_channels == 5
    assert set(FAMILIES) == {ARCHS[a].family for a in ARCHS}


@pytest.mark.parametrize("arch, size", [
    ("retinanet_tiny_fpn", 32),  # torchvision's RetinaNet: 32, 40, 50 px at P3
    ("fcos_tiny_fpn", 8),  # torchvision's FCOS: one point of the stride's size, 8 px at P3
    ("fasterrcnn_tiny_fpn", 32),  # torchvision's RPN: 32 px at P2
    ("gfl_tiny_fpn", 64),  # ATSS / GFL: octave scale 8 x stride 8 at P3
])
def test_the_declared_anchor_size_is_what_anchor_size_0_builds(arch, size):
    """``recipe show`` explains ``anchor_size = 0`` from the declaration alone (no torch): it must be the size the
    adapter builds, and the size of the detectors it mirrors."""
    built = build_detector(ModelConfig(arch=arch, anchor_size=0), 5, load_weights=False).core()
    generator = getattr(built, "rpn", built).anchor_generator
    assert default_anchor_size(arch) == FAMILIES[ARCHS[arch].family].anchor_size == size
    assert generator.sizes[0][0] == size


def test_unknown_arch_is_one_line():
    with pytest.raises(ModelError, match=r"model: unknown arch 'retinanet_r9000' .*"):
        signature("retinanet_r9000", 5)


def test_distillable_is_decided_without_building(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a detector was built")

    monkeypatch.setattr(models, "build_detector", no_build)
    monkeypatch.setattr(models, "_family", no_build)
    check_distillable(ModelConfig(arch="retinanet_tiny_fpn"), ModelConfig(arch="retinanet_resnet101_fpn"), 5)
    with pytest.raises(FrsError, match="the teacher is a faster_rcnn detector, the student a retinanet"):
        check_distillable(ModelConfig(arch="retinanet_tiny_fpn"), ModelConfig(arch="fasterrcnn_tiny_fpn"), 5)
