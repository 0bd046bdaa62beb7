"""mmdetection itself, for the parity tests of ``frs convert mmdet`` (the ``mmdet`` extra; skipped without it).

mmcv-lite (what installs beside mmdet 3.3 without a compiler) has no compiled ops, and mmdet imports
``mmcv.ops`` at import time. ``load()`` puts a stand-in ``mmcv._ext`` in place first: every op raises
NotImplementedError except ``nms``, which is torchvision's (the same greedy IoU suppression; mmcv's own
Python ``batched_nms`` around it is untouched). No model under test calls another compiled op on the
paths compared here (backbone, FPN, dense heads, RetinaNet's inference).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import torch
import torchvision

CONFIGS = {  # frs arch -> mmdetection 3.x model-zoo config (the paper's teachers, and FCOS's "tricks" layout)
    "retinanet_resnet101_fpn_mmdet": "retinanet/retinanet_r101_fpn_2x_coco.py",
    "fcos_resnet101_caffe_fpn_mmdet": "fcos/fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco.py",
    "fasterrcnn_resnet101_fpn_mmdet": "faster_rcnn/faster-rcnn_r101_fpn_2x_coco.py",
    "gfl_resnet101_fpn_mmdet": "gfl/gfl_r101_fpn_ms-2x_coco.py",
    "fcos_resnet50_caffe_fpn_tricks_mmdet": "fcos/fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py",
}


class _NoCompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv compiled op {name!r} is not available with mmcv-lite")

        return missing


def _nms(boxes, scores, iou_threshold, offset):
    if offset != 0:
        raise NotImplementedError("nms with offset 1 (legacy boxes)")
    return torchvision.ops.nms(boxes, scores, float(iou_threshold))


def load() -> tuple[str | None, object]:
    """(None, mmdet) when mmdet, mmengine and mmcv import; else (the reason, None)."""
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        ext = _NoCompiledOps("mmcv._ext")
        ext.nms = _nms
        sys.modules["mmcv._ext"] = ext
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable stack
        return f"mmcv does not import ({exc})", None
    try:
        import mmdet
        from mmdet.utils import register_all_modules
    except Exception as exc:  # noqa: BLE001
        return f"the mmdet extra is not installed ({type(exc).__name__}: {exc})", None
    register_all_modules()
    return None, mmdet


def build(mmdet, arch: str, seed: int = 0) -> torch.nn.Module:
    """mmdetection's model of ``CONFIGS[arch]`` with random weights (no pretrained body is fetched): its own
    init, then BN statistics and affines, GN affines and the per-level scales drawn at random so that a
    wrongly mapped entry shows in the outputs."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", CONFIGS[arch]))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            norm = ".bn" in name or ".gn." in name or "downsample.1." in name
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or (norm and name.endswith("bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif norm and name.endswith("weight"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith(".scale"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.startswith(("neck.", "bbox_head.", "rpn_head.")) and name.endswith("bias") and t.dim() == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def calibrate_bn(model, inputs: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``inputs`` through the body (then eval again), so
    that activations stay near unit scale through 100 random layers instead of growing to 1e7."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.train()
        m.momentum = 1.0
    with torch.no_grad():
        model.extract_feat(inputs)
    model.eval()


def preprocess(model, images_rgb: list[torch.Tensor]):
    """mmdetection's own batching of uint8 RGB ``(3, h, w)`` images as it loads them (BGR), at scale 1:
    ``(inputs (B, 3, H, W) normalised and zero-padded, data samples)``."""
    from mmdet.structures import DetDataSample

    samples = []
    for img in images_rgb:
        h, w = img.shape[-2:]
        s = DetDataSample()
        s.set_metainfo({"img_shape": (h, w), "ori_shape": (h, w), "scale_factor": (1.0, 1.0)})
        samples.append(s)
    data = model.data_preprocessor({"inputs": [img.flip(0) for img in images_rgb], "data_samples": samples}, False)
    return data["inputs"], data["data_samples"]
