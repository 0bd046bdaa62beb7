"""Where a model's weights come from: a torchvision weights enum name, an frs checkpoint, or a weights file
that torchvision publishes (a plain state dict), and which published file a local file is.

A state dict saved by a training script is read as torchvision's reference scripts read it: the one
``state_dict`` entry (PyTorch Lightning, many trainers) or ``model`` entry (detectron2, torchvision's references)
beside the script's own, and ``module.`` (DistributedDataParallel's) stripped from every key; the key and shape
check then applies as to any state dict. An mmdetection file is left to ``frs convert mmdet`` (its names differ).

A machine without internet (common on GPU clusters) cannot let torchvision download an enum's file. It can
name the file itself (``teacher.weights = "/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"``). When
the file's sha256 begins with the hash prefix in the published file's name (torch.hub's ``check_hash``
convention), it is that enum's file and is treated exactly as the enum would be.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from frs_cli.errors import ModelError
from frs_cli.files import missing_file
from frs_cli.models.torchfile import load_torch_file, refuse_training_state, unreadable_hint

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
# torch.hub's convention: "<name>-<first hex digits of the sha256>.<ext>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


@dataclass(frozen=True)
class Published:
    """One weights file torchvision publishes (a member of a weights enum)."""

    name: str  # the enum's name, e.g. "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1"
    file_name: str  # the published file's name, e.g. "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"
    hash_prefix: str  # leading hex digits of the file's sha256, from its name ("" when the name has none)
    categories: int  # classes its head predicts (0: not stated)

    @classmethod
    def of(cls, enum) -> Published:
        file_name = enum.url.rsplit("/", 1)[-1]
        found = _HASH_IN_NAME.search(file_name)
        return cls(f"{type(enum).__name__}.{enum.name}", file_name, found.group(1) if found else "",
                   len(enum.meta.get("categories") or []))


def published_weights(builder: str) -> list[Published]:
    """The files torchvision publishes for one of its builders ('retinanet_resnet50_fpn_v2', 'resnet50');
    [] for an architecture torchvision has no weights for (the CPU-sized ones, R18 detectors, GFL)."""
    from torchvision.models import get_model_weights

    try:
        enum_class = get_model_weights(builder)
    except (ValueError, KeyError):
        return []
    return [Published.of(member) for member in enum_class]


@dataclass
class WeightsSource:
    """Resolved ``weights`` / ``weights_backbone`` text. ``kind``: "enum" (torchvision downloads it, or takes
    it from torch's hub cache), "frs" (a checkpoint of ``frs train`` / ``frs distill``: ``content`` is the
    checkpoint dict) or "torchvision" (a state dict file, or a training script's checkpoint holding one:
    ``content`` maps names to tensors).
    ``published``: the torchvision file it is, when known (always for an enum)."""

    kind: str
    label: str  # how messages name it: the setting, then the enum name or the quoted path ("teacher.weights 'x.pth'")
    content: dict | None = None
    published: Published | None = None
    enum: Any = None  # the torchvision enum member (kind "enum")


def is_weights_enum(text: str) -> bool:
    return bool(text) and "_Weights." in text and not Path(text).exists()


def get_weights_enum(name: str, key: str = "weights"):
    """The torchvision enum member ``name``; ModelError naming ``key``, the setting it came from, if none is."""
    from torchvision.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"{key}: expected a torchvision weights enum name or a checkpoint path, got {name!r}",
                         hint="for example RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1") from exc


def resolve_weights(text: str, builder: str, key: str = "weights") -> WeightsSource:
    """What ``text`` names, for a model whose torchvision builder name is ``builder``; files are read here,
    enums are not downloaded yet. ModelError (one line) for a missing, truncated or foreign file. ``key``: the
    recipe key or option ``text`` came from ("teacher.weights", "student.weights_backbone"), which every message
    names."""
    if is_weights_enum(text):
        enum = get_weights_enum(text, key)
        label = f"{key} {text}"
        _check_enum_builder(label, enum, builder)  # before any download: the file would be refused after it
        return WeightsSource("enum", label, published=Published.of(enum), enum=enum)
    path = Path(text)
    if not path.is_file():
        raise ModelError(f"{key}: expected a torchvision weights enum name or a file, but {text!r} "
                         f"{missing_file(path)}",
                         hint="for example RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1, or the path of its .pth file")
    label = f"{key} {text!r}"
    published = _identify(path, published_weights(builder), label)
    content = torch_load(path, label)
    if _is_frs_checkpoint(content):
        check_checkpoint_format(content, label)
        return WeightsSource("frs", label, content)
    refuse_training_state(content, label, path)
    mmdet = is_mmdet_checkpoint(content)
    state, note = (None, "") if mmdet else state_in(content)  # mmdetection's names need frs convert mmdet
    if state is not None:
        if note:
            log.info("%s: %s", label, note)
        return WeightsSource("torchvision", label, state, published)
    keys = list(content)[:4] if isinstance(content, dict) else type(content).__name__
    raise ModelError(f"{label}: expected an frs checkpoint (keys 'arch', 'model') or a torchvision state "
                     f"dict (a tensor per parameter name), got another file ({keys})",
                     hint=(f"it looks like an mmdetection checkpoint: frs convert mmdet {text} --arch ARCH --out "
                           "FILE.pt makes an frs model file of it" if mmdet else note or
                           "frs train / frs distill write the first; torchvision publishes the second; a training "
                           "script's checkpoint holding it as its one 'state_dict' or 'model' entry loads too"))


# where training scripts keep the weights beside their own entries: PyTorch Lightning's and many trainers'
# "state_dict", detectron2's and torchvision's reference scripts' "model"
_WRAPPERS = ("state_dict", "model")


def _is_state_dict(content: Any) -> bool:
    return isinstance(content, dict) and bool(content) and all(isinstance(v, Tensor) for v in content.values())


def is_mmdet_checkpoint(content: Any) -> bool:
    """An mmdetection checkpoint (``meta`` beside its ``state_dict``), whose names ``frs convert mmdet`` maps."""
    return isinstance(content, dict) and isinstance(content.get("state_dict"), dict) and "meta" in content


def state_in(content: Any) -> tuple[dict[str, Tensor] | None, str]:
    """The state dict a file holds, read as torchvision's reference scripts read one: the whole file, or
    the one ``state_dict`` / ``model`` entry of a training script's checkpoint, with a ``module.`` prefix on every
    key (a model saved inside DistributedDataParallel) stripped. ``(state, what was unwrapped or stripped, "" if
    nothing)``, or ``(None, why the one entry is no state dict: "" when there is none)``."""
    done = []
    if not _is_state_dict(content):
        wrappers = [k for k in _WRAPPERS if k in content] if isinstance(content, dict) else []
        if len(wrappers) > 1:
            return None, ("it holds both a 'state_dict' and a 'model' entry, so which holds the weights is not "
                          "clear: save the state dict alone")
        if not wrappers:
            return None, ""
        key, inner = wrappers[0], content[wrappers[0]]
        if not _is_state_dict(inner):
            found = (("is empty" if not inner else f"holds keys {list(inner)[:6]}") if isinstance(inner, dict)
                     else f"is a {type(inner).__name__}")
            return None, f"its {key!r} entry {found}, not a tensor per parameter name"
        content = inner
        done.append(f"took the weights from its {key!r} entry")
    if all(isinstance(k, str) and k.startswith("module.") for k in content):
        content = {k.removeprefix("module."): v for k, v in content.items()}
        done.append("stripped the prefix 'module.' (DistributedDataParallel's) from every key")
    return content, " and ".join(done)


def _enum_builder(enum) -> str | None:
    """The torchvision builder whose weights enum ``enum`` belongs to ('resnet50', 'fasterrcnn_resnet50_fpn')."""
    from torchvision.models import get_model_weights, list_models

    for name in list_models():
        try:
            if get_model_weights(name) is type(enum):
                return name
        except (ValueError, KeyError):
            continue
    return None


def _check_enum_builder(label: str, enum, builder: str) -> None:
    """ModelError (one line, before any download, naming ``label``) unless ``enum`` is one of the weights
    torchvision publishes for ``builder`` (a detector arch, or a backbone's ResNet name)."""
    valid = [p.name for p in published_weights(builder)]
    if Published.of(enum).name in valid:
        return
    made_for = _enum_builder(enum)
    classifier = made_for is not None and made_for.startswith(("resnet", "resnext", "wide_resnet"))
    detector = builder not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152") and \
        not builder.startswith(("resnext", "wide_resnet"))
    if classifier and detector:
        hint = "an ImageNet classifier's weights: name them in weights_backbone"
    elif not valid:
        hint = (f"torchvision publishes no weights for {builder}: give an frs model file or a state dict file"
                if detector else None)
    else:
        hint = f"{builder}'s: {', '.join(valid)}"
    raise ModelError(f"{label}: torchvision publishes them for {made_for or 'another model'}, not for "
                     f"{builder}", hint=hint)


def _identify(path: Path, candidates: list[Published], label: str) -> Published | None:
    """The published file ``path`` is (its sha256 begins with that file's hash prefix), else None. A file that
    carries a published file's name but not its hash is a truncated or altered copy: ModelError."""
    candidates = [c for c in candidates if c.hash_prefix]
    if not candidates:
        return None
    digest = sha256_file(path)
    for c in candidates:
        if digest.startswith(c.hash_prefix):
            return c
    for c in candidates:
        if path.name == c.file_name:
            raise ModelError(f"{label}: named as torchvision's {c.name} file, but its sha256 begins "
                             f"{digest[:len(c.hash_prefix)]}, the published file's {c.hash_prefix}: a truncated "
                             f"or altered copy", hint="copy or download the file again and compare its size")
    return None


def hub_checkpoints() -> Path:
    """The folder of torch's hub cache where torchvision's downloads go (and a copy put there by hand is read):
    ``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints`` without ``TORCH_HOME``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def check_hub_copy(published: Published, label: str) -> str:
    """``published``'s file name; ModelError (naming ``label``, the setting) when torch's hub cache holds a file of
    that name whose sha256 does not begin with the published hash prefix (a truncated download or a wrong copy put
    there by hand)."""
    path = hub_checkpoints() / published.file_name
    if published.hash_prefix and path.is_file():
        digest = sha256_file(path)
        if not digest.startswith(published.hash_prefix):
            raise ModelError(f"{label}: the copy in torch's hub cache ({path}) has a sha256 "
                             f"beginning {digest[:len(published.hash_prefix)]}, the published file's "
                             f"{published.hash_prefix}: a truncated or altered copy",
                             hint="delete it, then copy or download the file again")
    return published.file_name


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load(path: str | Path, label: str) -> Any:
    """``load_torch_file`` with the weights setting named (``label``: "teacher.weights 'x.pth'"): ModelError for
    an unreadable file."""
    try:
        return load_torch_file(Path(path))
    except ModelError as exc:
        raise ModelError(f"{label}: {exc.message}", hint=unreadable_hint(exc.message)) from None


def _is_frs_checkpoint(content: Any) -> bool:
    return isinstance(content, dict) and "model" in content and "arch" in content


def check_checkpoint_format(ckpt: dict, label: str) -> None:
    """ModelError naming ``label`` (the setting and the file) for a checkpoint of a newer frs."""
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise ModelError(f"{label}: format {ckpt['format']} is newer than this frs reads "
                         f"({CHECKPOINT_FORMAT})", hint="upgrade frs")


def state_mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """'' when ``state`` has exactly the keys and shapes of ``expected``, else one line naming what differs (the
    missing keys, the unexpected ones, those of another shape: each part only when there are any).

    BatchNorm2d counts batches and FrozenBatchNorm2d does not: ``num_batches_tracked`` may be absent on
    either side."""
    state = without_batch_counts(state, expected)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:2]]
    parts = [f"{len(keys)} {what} (e.g. {example})" for keys, what, example in
             ((missing, "missing", missing[:2]), (unexpected, "unexpected", unexpected[:2]),
              (wrong, "of another shape", shapes)) if keys]
    return ", ".join(parts)


def without_batch_counts(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` less the ``num_batches_tracked`` entries ``expected`` does not have."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in expected}
