"""Checkpoints: a model file any stage can load (``frs eval``, a teacher for ``frs teacher-cache``) and the
full training state that ``--resume`` continues from. Every file is written to a temporary name and renamed,
so a killed run never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import frs_cli
from frs_cli.archs import ModelConfig
from frs_cli.errors import ModelError, StorageError
from frs_cli.files import atomic_path, free_bytes
from frs_cli.models import (
    CHECKPOINT_FORMAT,
    build_detector,
    load_checkpoint_file,
    load_state,
    load_torch_file,
    model_fingerprint,
)
from frs_cli.models.base import Detector

if TYPE_CHECKING:
    from frs_cli.data.coco import CocoIndex

LAST = "last.pt"  # full training state, rewritten every epoch, every train.checkpoint_every steps, on a clean stop
FINAL = "model_final.pt"  # the trained model alone


SAVE_HINT = "the previous file is kept; free space, then run again"
TRAINING_SAVE_HINT = "the previous file is kept; free space, then run again with --resume"


def atomic_save(obj, path: str | Path, hint: str = SAVE_HINT) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed into place; StorageError when writing fails
    (a full disk), with ``hint`` (a training run's files give ``TRAINING_SAVE_HINT``): the file already under
    ``path``, if any, is kept as it was.

    Equal objects give equal bytes: torch names the archive's folder after the file it is given by name, which
    here would be the temporary name (holding the process id), so it is given an open file instead (folder
    ``archive``). A teacher is fingerprinted by its file's bytes (``frs_cli.cache.identity``)."""
    if not Path(path).exists():  # no earlier file to keep: the hint does not promise one
        hint = hint.removeprefix("the previous file is kept; ")
    with atomic_path(path, hint=hint) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as exc:  # torch's zip writer reports a failed write this way (an OSError: atomic_path)
            free = free_bytes(path)
            room = f"{free / 1e6:,.0f} MB free on its disk" if free is not None else "its disk's free space unknown"
            # its own words name a line of its C++ source ("[enforce fail at inline_container.cc:…] . unexpected
            # pos …"), which tells a user nothing
            what = "torch's archive writer stopped part way" if "enforce fail" in str(exc) else str(exc)
            raise StorageError(f"{path}: writing failed ({what}; {room})", hint=hint) from exc


def model_payload(detector: Detector, model_cfg: ModelConfig, label_to_category, category_names, geometry,
                  category_ids=None) -> dict:
    """What a model file holds: enough to rebuild the detector and map its labels back to COCO ids, and the
    categories it was trained on (``category_ids[i]`` is named ``category_names[i]``; default: the labels' ids)."""
    state = {k: v.detach().cpu() for k, v in detector.core().state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "model",
        "created_by": f"frs {frs_cli.__version__}",
        "arch": detector.arch,
        "num_classes": detector.num_classes,
        "model_config": dataclasses.asdict(model_cfg),
        "label_to_category": list(label_to_category),
        "category_names": list(category_names),
        "category_ids": [int(c) for c in (label_to_category if category_ids is None else category_ids)],
        "geometry": geometry.to_dict(),
        "fingerprint": model_fingerprint(detector),
        "model": state,
    }


def save_model(path: str | Path, detector: Detector, model_cfg: ModelConfig, index: CocoIndex, geometry) -> Path:
    """Write ``detector`` as a model file (atomically) with the labels and category names of ``index``, the
    dataset it predicts for."""
    atomic_save(model_payload(detector, model_cfg, index.label_to_category, [c["name"] for c in index.categories],
                              geometry, [c["id"] for c in index.categories]), path, TRAINING_SAVE_HINT)
    return Path(path)


def load_detector(path: str | Path) -> tuple[Detector, dict]:
    """Rebuild the detector stored in an frs checkpoint (model file or training state)."""
    ckpt = load_checkpoint_file(path)
    cfg = ModelConfig(**{**ckpt["model_config"], "weights": str(path)})
    detector = build_detector(dataclasses.replace(cfg, weights=""), ckpt["num_classes"], load_weights=False)
    load_state(detector, ckpt["model"], f"checkpoint {str(path)!r}")
    return detector, ckpt


def load_training_state(path: Path) -> dict:
    """The training state ``--resume`` continues from (``LAST``); TrainingError when it is missing or damaged."""
    from frs_cli.errors import TrainingError

    if not path.is_file():
        raise TrainingError(f"--resume: expected a training state at {str(path)!r}, found none")
    try:
        state = load_torch_file(path)
    except ModelError as exc:
        raise TrainingError(f"--resume: {str(path)!r} is not a readable training state: {exc.message}",
                            hint=f"the file is damaged; delete {path} and run the same command again to start "
                                 "the run from the beginning") from None
    keys = {"modules", "optimizer", "scheduler", "scaler", "rng", "epoch", "epoch_step", "iters_per_epoch"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise TrainingError(f"--resume: {str(path)!r} is not a training state (expected keys {sorted(keys)}, "
                            f"got {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    return state


def rng_state() -> dict:
    """Every random generator's state, in types ``torch.load(weights_only=True)`` reads (no numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    if isinstance(keys, torch.Tensor):  # states saved by this frs; earlier ones hold the numpy array itself
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
