"""A trained RetinaNet student as an ONNX graph: image batch in, every FPN level's raw head outputs out.

The graph holds what is heavy and fixed: ImageNet normalisation, backbone, FPN and both heads. It stops before
anchor decoding and NMS, whose parameters a deployment usually tunes (and which ONNX expresses poorly for a
dynamic number of boxes); the anchor settings ride along as metadata so the decoding can be rebuilt.

Graph contract:
    input ``images``: ``(B, 3, H, W)`` float32 RGB pixels in 0..255, each image at the top-left of a canvas
        filled with ``frs_pad_value`` (the model's pixel mean, which normalises to exactly zero: the padding
        training saw); B, H and W are dynamic, H and W multiples of the recorded ``size_divisible``.
        Resize the image as the checkpoint's geometry says (``frs_geometry`` metadata) before padding.
    outputs, per level ``P3..P7`` (finest first):
        ``cls_logits_<P>``: ``(B, A*K, H/s, W/s)`` class logits, channel ``a*K + k`` = anchor a, class k;
        ``bbox_deltas_<P>``: ``(B, A*4, H/s, W/s)`` box deltas (torchvision's ``BoxCoder`` weights 1, 1, 1, 1).
    metadata (``metadata_props``): ``frs_arch``, ``frs_family``, ``frs_levels`` (JSON: name and stride),
        ``frs_num_classes``, ``frs_num_anchors``, ``frs_anchor_size``, ``frs_label_to_category`` (JSON),
        ``frs_geometry`` (JSON), ``frs_pad_value`` (JSON: the R, G, B value of the padding).

The graph normalises every pixel alike. A canvas of ``frs_pad_value`` therefore gives the zero padding of
``Detector.normalize`` and the same outputs as PyTorch's own forward everywhere; a black canvas would change the
outputs near the image's right and bottom edges.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from frs_cli.errors import ModelError
from frs_cli.files import atomic_path
from frs_cli.optional import require
from frs_cli.progress import NullProgress, Progress

log = logging.getLogger(__name__)

OPSET = 18
SUPPORTED_FAMILIES = ("retinanet",)
INPUT_NAME = "images"


class RetinaNetHeadOutputs(nn.Module):
    """``(B, 3, H, W)`` float pixels -> ``(*cls_logits per level, *bbox_deltas per level)``, as above."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        d = self.detector
        x = ((images.flip(1) if d.bgr else images) - d.pixel_mean) / d.pixel_std
        features = list(d.model.backbone(x).values())
        cls_head, reg_head = d.model.head.classification_head, d.model.head.regression_head
        cls = [cls_head.cls_logits(cls_head.conv(f)) for f in features]
        box = [reg_head.bbox_reg(reg_head.conv(f)) for f in features]
        return (*cls, *box)


@dataclass
class ExportResult:
    path: str
    outputs: list[str]  # output names in graph order
    checked_shapes: list[tuple[int, ...]]  # input shapes compared against PyTorch
    max_abs_diff: float  # largest |onnxruntime - PyTorch| over every output and checked shape (nan: not checked)
    max_ref: float  # largest |PyTorch output| over the same, for scale


def _require(module: str):
    return require(module, "export --onnx", hint="pip install 'frs[onnx]'")


def build_export_module(checkpoint: str | Path):
    """``(module, checkpoint dict, output names)`` for the detector stored in ``checkpoint`` (eval mode, CPU).

    ``ModelError`` for a detector family this exporter does not cover (see ``SUPPORTED_FAMILIES``).
    """
    from frs_cli.train.checkpoint import load_detector

    detector, ckpt = load_detector(checkpoint)
    if detector.family not in SUPPORTED_FAMILIES:
        raise ModelError(f"export --onnx: expected a {' or '.join(SUPPORTED_FAMILIES)} checkpoint, got a "
                         f"{detector.family} detector ({ckpt['arch']})", hint="only RetinaNet exports to ONNX so far")
    names = [lv.name for lv in detector.levels]
    outputs = [f"cls_logits_{n}" for n in names] + [f"bbox_deltas_{n}" for n in names]
    return RetinaNetHeadOutputs(detector.cpu().eval()), ckpt, outputs


def _metadata(module: RetinaNetHeadOutputs, ckpt: dict) -> dict[str, str]:
    d = module.detector
    return {
        "frs_arch": str(ckpt["arch"]), "frs_family": d.family,
        "frs_levels": json.dumps([{"name": lv.name, "stride": lv.stride} for lv in d.levels]),
        "frs_num_classes": str(d.num_classes), "frs_num_anchors": str(d.num_anchors),
        "frs_anchor_size": str(ckpt["model_config"].get("anchor_size", 0)),
        "frs_label_to_category": json.dumps(list(ckpt["label_to_category"])),
        "frs_geometry": json.dumps(ckpt["geometry"]),
        "frs_pad_value": json.dumps(pad_value(d)),
    }


def pad_value(detector) -> list[float]:
    """The R, G, B pixel (0..255) that normalises to exactly zero: what the graph's input is padded with."""
    mean = [float(v) for v in detector.pixel_mean.flatten()]
    return mean[::-1] if detector.bgr else mean  # a BGR model's mean is in BGR order


def export_onnx(checkpoint: str | Path, out: str | Path, *, check: bool = True, opset: int = OPSET,
                progress: Progress | None = None) -> ExportResult:
    """Write the student in ``checkpoint`` to ``out`` as ONNX (see the module docstring), then, with ``check``,
    run it in onnxruntime on two batches of other sizes than the traced one and compare with PyTorch.

    The file appears only when the export (and the check) succeeded. ``ConfigError`` when onnx, onnxscript or
    onnxruntime is missing; ``ModelError`` for an unsupported family or when onnxruntime's outputs differ from
    PyTorch's by more than ``1e-3`` times their largest magnitude.
    """
    progress = progress or NullProgress()
    onnx = _require("onnx")
    _require("onnxscript")  # torch.onnx's exporter builds the graph with it
    module, ckpt, outputs = build_export_module(checkpoint)
    div = int(ckpt["geometry"].get("size_divisible", 32)) or 32
    out = Path(out)
    progress.start("export", 3 if check else 2, unit="step")
    example = torch.rand(2, 3, 2 * div, 3 * div) * 255
    batch, rows, cols = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("h", min=1, max=512), \
        torch.export.Dim("w", min=1, max=512)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=outputs, external_data=False,
                                    dynamic_shapes=({0: batch, 2: div * rows, 3: div * cols},))
        progress.update(1)
        model = program.model_proto
        for key, value in _metadata(module, ckpt).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
        progress.update(1)
        result = ExportResult(str(out), outputs, [], math.nan, math.nan)
        if check:
            shapes = [(1, 3, 3 * div, 2 * div), (3, 3, 4 * div, 4 * div)]
            diff, ref = compare_with_torch(module, tmp, shapes)
            result.checked_shapes, result.max_abs_diff, result.max_ref = shapes, diff, ref
            if not diff <= 1e-3 * max(ref, 1.0):
                raise ModelError(f"export --onnx: expected onnxruntime to reproduce PyTorch's outputs, got a largest "
                                 f"difference of {diff:.3g} (outputs up to {ref:.3g}); nothing written to {str(out)!r}")
            progress.update(1)
    progress.stop()
    log.info("wrote %s (%d outputs)", out, len(outputs))
    return result


def compare_with_torch(module: nn.Module, onnx_path: str | Path, shapes: list[tuple[int, ...]],
                       seed: int = 0) -> tuple[float, float]:
    """Run ``module`` and the ONNX file on seeded random pixel batches of ``shapes``:
    ``(largest |difference|, largest |PyTorch output|)`` over every output and shape."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    diff, ref = 0.0, 0.0
    for shape in shapes:
        x = torch.rand(*shape, generator=generator) * 255
        with torch.no_grad():
            expected = module(x)
        got = session.run(None, {INPUT_NAME: x.numpy()})
        if len(got) != len(expected):
            raise ModelError(f"export --onnx: expected {len(expected)} outputs from onnxruntime, got {len(got)}")
        for g, e in zip(got, expected):
            if tuple(g.shape) != tuple(e.shape):
                raise ModelError(f"export --onnx: expected an output of shape {tuple(e.shape)} for input {shape}, "
                                 f"got {tuple(g.shape)}")
            diff = max(diff, float((torch.from_numpy(g) - e).abs().max()))
            ref = max(ref, float(e.abs().max()))
    return diff, ref
