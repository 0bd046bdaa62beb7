"""Where the training loop's numbers go: ``metrics.jsonl`` always, TensorBoard event files when asked.

``metrics.jsonl`` (one JSON object per line; ``eval.run_log`` reads it back) gets a step record
``{"epoch", "iter", "lr", <loss term>..., "loss", "img_s", "data_wait"}`` and an eval record
``{"epoch", "eval": {...}}``. With ``train.tensorboard = true`` the same numbers also go to
``RUN_DIR/tensorboard/`` as scalars against the global iteration: ``loss/<term>`` and ``loss/total``,
``train/lr``, ``train/img_s``, ``train/data_wait`` and ``val/<metric>`` (undefined metrics are left out), and
pictures (the FRS mask panels) as images. TensorBoard is an optional extra: ``pip install 'frs[tensorboard]'``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from frs_cli.files import storage_errors
from frs_cli.optional import require

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_TRAIN_KEYS = ("lr", "img_s", "data_wait")  # step-record keys shown under train/
_NOT_SCALARS = ("epoch", "iter")


def require_tensorboard() -> None:
    """``ConfigError`` (one line, with the install hint) unless TensorBoard's writer can be imported."""
    hint = "pip install 'frs[tensorboard]', or set train.tensorboard = false"
    require("tensorboard", "train.tensorboard = true", hint)
    require("torch.utils.tensorboard", "train.tensorboard = true", hint)


def _writer(out_dir: Path):
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(out_dir) / TENSORBOARD_DIR))


class MetricsLog:
    """The loop's one writer (main process only): ``step(record)``, ``eval(epoch, metrics, iteration)``,
    ``image(tag, picture, iteration)``, ``close()``."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = False):
        self.path = Path(out_dir) / METRICS_FILE
        self.file = open(self.path, "a")  # noqa: SIM115 (kept open for the run; close())
        self.board = _writer(out_dir) if tensorboard else None

    def _append(self, record: dict) -> None:
        """One line, flushed; a full disk is one line naming the file (the run stops; a resume continues from its
        last saved state and cuts this file back to it)."""
        with storage_errors(str(self.path), hint="free space, then run again with --resume"):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def step(self, record: dict) -> None:
        self._append(record)
        if self.board is None:
            return
        it = int(record["iter"])
        for key, value in record.items():
            if key in _NOT_SCALARS or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            tag = f"train/{key}" if key in _TRAIN_KEYS else ("loss/total" if key == "loss" else f"loss/{key}")
            self.board.add_scalar(tag, value, it)

    def eval(self, epoch: int, metrics: dict, iteration: int) -> None:
        self._append({"epoch": epoch, "eval": metrics})
        if self.board is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):  # None: undefined, not 0
                self.board.add_scalar(f"val/{key}", value, iteration)
        self.board.add_scalar("val/epoch", epoch, iteration)
        self.board.flush()

    def image(self, tag: str, picture, iteration: int) -> None:
        """A PIL picture as a TensorBoard image (nothing without TensorBoard: metrics.jsonl holds numbers only)."""
        if self.board is None:
            return
        import numpy as np

        self.board.add_image(tag, np.asarray(picture.convert("RGB")), iteration, dataformats="HWC")
        self.board.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what a full disk kept from being written was reported when it was
            self.file.close()
        if self.board is not None:
            self.board.close()


def write_images(out_dir: str | Path, pictures: dict, iteration: int = 0) -> None:
    """Write PIL ``pictures`` (``tag -> picture``) to ``RUN_DIR/tensorboard`` as images at ``iteration``."""
    board = _writer(out_dir)
    try:
        import numpy as np

        for tag, picture in pictures.items():
            board.add_image(tag, np.asarray(picture.convert("RGB")), iteration, dataformats="HWC")
    finally:
        board.close()


def teacher_mask_picture(teacher, dataset, min_height: int = 256):
    """The FRS mask figure of the first training image (``orig`` view) under a live ``teacher`` (an adapter):
    ``S_l = max_k sigmoid(z_l)`` per level (``losses.frs_masks``), drawn by ``viz.masks.level_panels``."""
    import torch

    from frs_cli.data.coco import collate
    from frs_cli.losses import frs_masks
    from frs_cli.viz.masks import level_panels

    sample = dataset[(0, "orig")]
    batch = collate([sample])
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            out = teacher(batch.images.to(teacher.pixel_mean.device), batch.image_sizes, detect=False)
    finally:
        teacher.train(was_training)
    masks = [m[0].float().cpu() for m in frs_masks(out.cls_logits)]  # (H_l, W_l) each
    scale = max(1, -(-min_height // sample.image.shape[-2]))
    return level_panels(sample.image, masks, teacher.strides, teacher.level_names, boxes_xyxy=sample.boxes,
                        scale=scale, title=f"FRS mask of the teacher, image {sample.image_id} (orig)")
