"""Checkpoints: a model file any stage can load (``frs eval``, a teacher for ``frs teacher-cache``) and the
full training state that ``--resume`` continues from. Every file is written to a temporary name and renamed,
so a killed run never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from frs_cli.errors import StorageError
from frs_cli.files import atomic_path
from frs_cli.models import CHECKPOINT_FORMAT, build_detector, load_checkpoint_file, load_state, model_fingerprint
from frs_cli.models.base import Detector
from frs_cli.models.config import ModelConfig

LAST = "last.pt"  # full training state, rewritten every epoch, every train.checkpoint_every steps, on a clean stop
FINAL = "model_final.pt"  # the trained model alone


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed into place; StorageError when writing fails
    (a full disk): the file already under ``path``, if any, is kept as it was."""
    hint = "the previous file is kept; free space, then run again (with --resume for a training run)"
    with atomic_path(path, hint=hint) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (a full disk too) this way
            free = shutil.disk_usage(Path(path).parent).free
            raise StorageError(f"{path}: writing failed ({exc}; {free / 1e6:,.0f} MB free on its disk)",
                               hint=hint) from exc


def model_payload(detector: Detector, model_cfg: ModelConfig, label_to_category, category_names, geometry) -> dict:
    """What a model file holds: enough to rebuild the detector and map its labels back to COCO ids."""
    state = {k: v.detach().cpu() for k, v in detector.core().state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "model",
        "arch": detector.arch,
        "num_classes": detector.num_classes,
        "model_config": dataclasses.asdict(model_cfg),
        "label_to_category": list(label_to_category),
        "category_names": list(category_names),
        "geometry": geometry.to_dict(),
        "fingerprint": model_fingerprint(detector),
        "model": state,
    }


def load_detector(path: str | Path) -> tuple[Detector, dict]:
    """Rebuild the detector stored in an frs checkpoint (model file or training state)."""
    ckpt = load_checkpoint_file(path)
    cfg = ModelConfig(**{**ckpt["model_config"], "weights": str(path)})
    detector = build_detector(dataclasses.replace(cfg, weights=""), ckpt["num_classes"], load_weights=False)
    load_state(detector, ckpt["model"], repr(str(path)))
    return detector, ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
