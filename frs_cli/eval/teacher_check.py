"""Trusting the teacher before caching it: a quick COCO mAP on a few val images against a floor.

The original FRS code's known failure is a teacher silently re-initialised after loading; its features then
teach nothing. A randomly initialised RetinaNet scores an AP of about 0, so even a low floor catches it.
"""

from __future__ import annotations

import logging

from frs_cli.data.coco import CocoViews
from frs_cli.dist import DistContext
from frs_cli.errors import ModelError
from frs_cli.eval.predict import evaluate_detector
from frs_cli.models.base import Detector
from frs_cli.progress import Progress

log = logging.getLogger(__name__)


def check_teacher(teacher: Detector, val: CocoViews, images: int, min_ap: float, ctx: DistContext, *,
                  split: str = "val", fingerprint: str = "?", batch_size: int = 8, workers: int = 2, amp: bool = True,
                  progress: Progress | None = None) -> dict:
    """COCO box AP of ``teacher`` on the first ``images`` images of ``val``; ModelError when below ``min_ap``.

    Returns ``{"split", "images", "AP", "AP50", "min_AP"}`` (fractions in 0..1), to record with the cache.
    ``split`` names ``val`` in messages; ``fingerprint`` (the teacher's weights fingerprint) is named in the error,
    to compare with the checkpoint's.
    Call on every process under torchrun (evaluation is shared).
    """
    n = min(images, len(val))
    metrics = evaluate_detector(teacher, val, ctx, batch_size=batch_size, workers=workers, amp=amp,
                                progress=progress, max_images=n)
    log.info("teacher check: AP %.4f on the first %d images of %s (minimum %.4f)", metrics["AP"], n, split, min_ap)
    if metrics["AP"] < min_ap:
        raise ModelError(f"teacher-cache: the teacher scores AP {metrics['AP']:.4f} on the first {n} {split} images, "
                         f"below the minimum {min_ap:.4f}: is it the trained teacher (weights fingerprint "
                         f"{fingerprint})?", hint="check teacher.weights; nothing was cached")
    return {"split": split, "images": n, "AP": metrics["AP"], "AP50": metrics["AP50"], "min_AP": min_ap}

