"""mmdetection checkpoints onto the frs adapters of its layouts (the ``*_mmdet`` archs of ``frs models``).

mmdetection names a model's parts ``backbone`` (its ResNet, named as torchvision's), ``neck`` (FPN:
``lateral_convs.i.conv``, ``fpn_convs.i.conv``, the extra levels after the outputs) and ``bbox_head`` /
``rpn_head`` / ``roi_head``. Each family below renames those to the torchvision modules the adapter holds,
then the result is checked against the adapter both ways: a key of the checkpoint that no rule takes, a
key of the adapter that nothing fills, or a shape that differs is one ``ModelError`` naming them.

Layout facts the renaming carries (read off mmdetection 3.x's heads; 2.x names them the same):
- GN tower convs have no bias in mmdetection (``conv_bias='auto'``); torchvision's have one: it is set to 0.
- ``bbox_head.scales.i.scale`` (one scalar per level, FCOS and GFL) -> one ``scales`` vector.
- Faster R-CNN's ``fc_cls`` puts background last (row K), torchvision first (row 0); ``fc_reg`` has no rows
  for background, torchvision's ``bbox_pred`` four (set to 0).
- GFL's ``integral.project`` is the fixed bin positions 0..reg_max, checked and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from frs_cli.errors import ModelError
from frs_cli.files import missing_file
from frs_cli.models.torchfile import check_torch_archive, first_line, quiet_load, unreadable_hint

# COCO's 80 category ids in mmdetection's class order (sorted ids), and their names
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

Rule = tuple[str, str | Callable[[re.Match], str]]


def _tower(prefix: str) -> Callable[[re.Match], str]:
    """``cls_convs.i.conv`` / ``cls_convs.i.gn`` -> entries 3i / 3i+1 of a (conv, GN, ReLU) x n Sequential."""
    return lambda m: f"{prefix}.{3 * int(m[1]) + (0 if m[2] == 'conv' else 1)}.{m[3]}"


def _rules(family: str, num_inputs: int) -> list[Rule]:
    """(pattern, replacement) of every key a checkpoint of ``family`` may hold; FPN extra convs after
    ``num_inputs`` outputs are P6, P7."""
    rules: list[Rule] = [
        (r"backbone\.(.+)", r"backbone.body.\1"),
        (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"backbone.fpn.inner_blocks.\1.0.\2"),
        (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)",
         lambda m: (f"backbone.fpn.layer_blocks.{m[1]}.0.{m[2]}" if int(m[1]) < num_inputs
                    else f"backbone.fpn.extra_blocks.p{6 + int(m[1]) - num_inputs}.{m[2]}")),
    ]
    gn_tower = r"bbox_head\.{}_convs\.(\d+)\.(conv|gn)\.(weight|bias)"
    if family == "retinanet":
        rules += [
            (r"bbox_head\.cls_convs\.(\d+)\.conv\.(weight|bias)", r"head.classification_head.conv.\1.0.\2"),
            (r"bbox_head\.reg_convs\.(\d+)\.conv\.(weight|bias)", r"head.regression_head.conv.\1.0.\2"),
            (r"bbox_head\.retina_cls\.(weight|bias)", r"head.classification_head.cls_logits.\1"),
            (r"bbox_head\.retina_reg\.(weight|bias)", r"head.regression_head.bbox_reg.\1"),
        ]
    elif family == "fcos":
        rules += [
            (gn_tower.format("cls"), _tower("head.classification_head.conv")),
            (gn_tower.format("reg"), _tower("head.regression_head.conv")),
            (r"bbox_head\.conv_cls\.(weight|bias)", r"head.classification_head.cls_logits.\1"),
            (r"bbox_head\.conv_reg\.(weight|bias)", r"head.regression_head.bbox_reg.\1"),
            (r"bbox_head\.conv_centerness\.(weight|bias)", r"head.regression_head.bbox_ctrness.\1"),
            (r"bbox_head\.scales\.(\d+)\.scale", r"head.scales.\1"),
        ]
    elif family == "gfl":
        rules += [
            (gn_tower.format("cls"), _tower("head.classification.tower")),
            (gn_tower.format("reg"), _tower("head.box.tower")),
            (r"bbox_head\.gfl_cls\.(weight|bias)", r"head.classification.logits.\1"),
            (r"bbox_head\.gfl_reg\.(weight|bias)", r"head.box.distribution.\1"),
            (r"bbox_head\.scales\.(\d+)\.scale", r"head.box.scales.\1"),
            (r"bbox_head\.integral\.project", "integral.project"),
        ]
    elif family == "faster_rcnn":
        rules += [
            (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
            (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1"),
            (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
            (r"roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)", r"roi_heads.box_head.fc6.\1"),
            (r"roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)", r"roi_heads.box_head.fc7.\1"),
            (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
            (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
        ]
    return rules


# per family: the checkpoint key whose first dimension counts classes, and (divisor, offset) to get K from it
# key prefixes of torchvision's detectors (and of frs's adapters, which keep torchvision's names): never mmdetection's
TORCHVISION_PREFIXES = ("backbone.body.", "head.classification_head.", "rpn.head.", "roi_heads.box_predictor.")

CLASS_KEYS = {
    "retinanet": ("bbox_head.retina_cls.weight", 9, 0),
    "fcos": ("bbox_head.conv_cls.weight", 1, 0),
    "gfl": ("bbox_head.gfl_cls.weight", 1, 0),
    "faster_rcnn": ("roi_head.bbox_head.fc_cls.weight", 1, -1),  # + background
}


def read_mmdet_state(path: str | Path, allow_pickle: bool = False) -> dict[str, Tensor]:
    """The model weights of an mmdetection checkpoint file (``state_dict`` of a saved runner, or a bare
    state dict); a ``module.`` prefix (data-parallel wrappers) is removed. ModelError if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"mmdet checkpoint: expected a file at {str(p)!r}, but it {missing_file(p)}")
    try:
        check_torch_archive(p)
    except ModelError as exc:
        raise ModelError(f"mmdet checkpoint {str(p)!r}: {exc.message}", hint=unreadable_hint(exc.message)) from None
    try:
        ckpt = quiet_load(p, weights_only=not allow_pickle)
    except Exception as exc:  # torch raises several types for a file it cannot read
        hint = ("it holds Python objects beyond tensors; if you trust the file, pass --allow-pickle"
                if not allow_pickle and "weights_only" in str(exc) else "is it an mmdetection .pth file?")
        raise ModelError(f"mmdet checkpoint {str(p)!r}: not readable as a torch checkpoint ({first_line(exc)})",
                         hint=hint) from exc
    if isinstance(ckpt, dict) and "model" in ckpt and "arch" in ckpt:  # an frs model file, not mmdetection's
        raise ModelError(f"mmdet checkpoint {str(p)!r}: expected an mmdetection checkpoint, got an frs model file "
                         f"(arch {ckpt['arch']!r})", hint="frs model files need no conversion: name the file as "
                                                          "teacher.weights or student.weights")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if isinstance(state, dict) and any(str(k).startswith(TORCHVISION_PREFIXES) for k in state):
        raise ModelError(f"mmdet checkpoint {str(p)!r}: expected an mmdetection checkpoint, got torchvision's layout "
                         f"(keys such as {next(k for k in state if str(k).startswith(TORCHVISION_PREFIXES))!r})",
                         hint="a torchvision detector's file needs no conversion: name it as teacher.weights or "
                              "student.weights with a torchvision arch (frs models)")
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        what = (f"a {type(ckpt).__name__}" if not isinstance(state, dict) else "an empty dict" if not state else
                f"a dict whose {sum(not isinstance(v, Tensor) for v in state.values())} of {len(state)} values are "
                f"not tensors (e.g. {next(k for k, v in state.items() if not isinstance(v, Tensor))!r})")
        raise ModelError(f"mmdet checkpoint {str(p)!r}: expected a dict of tensors (or one under 'state_dict'), "
                         f"got {what}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def num_classes_of(state: dict[str, Tensor], family: str) -> int:
    key, per, offset = CLASS_KEYS[family]
    if key not in state:
        raise ModelError(f"mmdet checkpoint: expected the {family} key {key!r}, it is missing",
                         hint="is --arch the detector this checkpoint holds?")
    rows = state[key].shape[0]
    if per > 1 and rows % per:
        raise ModelError(f"mmdet checkpoint: expected {key!r} to have {per} anchors x classes rows (a multiple of "
                         f"{per}), got {rows}", hint="is --arch the detector this checkpoint holds?")
    return rows // per + offset


def rename(state: dict[str, Tensor], family: str, num_inputs: int) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """mmdetection keys -> the adapter's keys (values unchanged); also each new key's origin and the keys no
    rule takes."""
    rules = [(re.compile(p), r) for p, r in _rules(family, num_inputs)]
    out, origin, unknown = {}, {}, []
    for key, value in state.items():
        for pattern, repl in rules:
            m = pattern.fullmatch(key)
            if m:
                new = repl(m) if callable(repl) else m.expand(repl)
                out[new], origin[new] = value, key
                break
        else:
            unknown.append(key)
    return out, origin, unknown


def _gather_scales(state: dict[str, Tensor], prefix: str) -> None:
    """``prefix.0`` .. ``prefix.n`` scalars -> one ``prefix`` vector (in place)."""
    keys = sorted((k for k in state if k.startswith(prefix + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if keys:
        state[prefix] = torch.stack([state.pop(k).reshape(()) for k in keys])


def _faster_rcnn_predictor(state: dict[str, Tensor]) -> None:
    """mmdetection's box predictor rows (classes, then background; regression for classes only) -> torchvision's
    (background first; four regression rows for it, zero). In place."""
    rep = "roi_heads.box_predictor."
    for part in ("weight", "bias"):
        cls_key, reg_key = rep + f"cls_score.{part}", rep + f"bbox_pred.{part}"
        if cls_key in state:
            w = state[cls_key]
            state[cls_key] = torch.cat([w[-1:], w[:-1]])
        if reg_key in state:
            w = state[reg_key]
            if cls_key in state and w.shape[0] != 4 * (state[cls_key].shape[0] - 1):
                raise ModelError(f"mmdet checkpoint: expected class-specific box regression (4 x classes rows), "
                                 f"got {w.shape[0]} rows", hint="class-agnostic ROI heads are not supported")
            state[reg_key] = torch.cat([torch.zeros_like(w[:4]), w])


def _zero_tower_biases(state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Tower convs followed by GroupNorm have no bias in mmdetection: torchvision's get 0 (in place)."""
    for key, value in expected.items():
        if key.endswith(".bias") and key not in state and key[: -len("bias")] + "weight" in state and \
                re.search(r"\.(conv|tower)\.\d+\.bias$", key) and value.dim() == 1:
            state[key] = torch.zeros_like(value)


def to_adapter_state(state: dict[str, Tensor], family: str, expected: dict[str, Tensor],
                     reg_max: int = 16) -> dict[str, Tensor]:
    """An mmdetection state dict of ``family`` -> the state dict of the matching adapter's ``core()``, whose own
    state dict is ``expected`` (for names and shapes). ModelError naming unknown, missing or misshapen keys."""
    num_inputs = 4 if family == "faster_rcnn" else 3
    out, origin, unknown = rename(state, family, num_inputs)
    for prefix in ("head.scales", "head.box.scales"):
        _gather_scales(out, prefix)
    project = out.pop("integral.project", None)
    if project is not None and not torch.equal(project.float(), torch.arange(reg_max + 1, dtype=torch.float32)):
        raise ModelError(f"mmdet checkpoint: expected GFL bin positions 0..{reg_max}, got {project.tolist()}")
    if family == "faster_rcnn":
        _faster_rcnn_predictor(out)
    _zero_tower_biases(out, expected)
    out = {k: v for k, v in out.items() if not k.endswith("num_batches_tracked") or k in expected}
    unknown += [origin.get(k, k) for k in out if k not in expected]
    missing = [k for k in expected if k not in out and not k.endswith("num_batches_tracked")]
    wrong = [f"{origin.get(k, k)} {tuple(out[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in out if k in expected and out[k].shape != expected[k].shape]
    if unknown or missing or wrong:  # the checkpoint's names, but for keys it lacks: those the adapter has no fill for
        lacking = "missing (adapter keys nothing in the checkpoint fills)"
        parts = [f"{len(x)} {what}: {', '.join(x[:4])}{' ...' if len(x) > 4 else ''}"
                 for x, what in ((unknown, "unknown"), (missing, lacking), (wrong, "of another shape")) if x]
        raise ModelError(f"mmdet checkpoint: does not fit the {family} adapter: {'; '.join(parts)}",
                         hint="check --arch against the checkpoint's config (frs models lists the *_mmdet archs)")
    return {k: v.to(expected[k].dtype) for k, v in out.items()}
