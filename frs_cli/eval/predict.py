"""Run a detector over a split and score it: detections in original-image pixels, then COCO mAP."""

from __future__ import annotations

from pathlib import Path

import torch

from frs_cli.data.canvas_batches import whole_canvas_batches
from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.transforms import invert_boxes
from frs_cli.dist import DistContext, all_gather_objects
from frs_cli.eval.coco_eval import CocoEvaluator, load_coco
from frs_cli.models.base import Detector
from frs_cli.progress import NullProgress, Progress, share


@torch.no_grad()
def predict(detector: Detector, dataset: CocoViews, ctx: DistContext, batch_size: int = 8, workers: int = 2,
            amp: bool = True, progress: Progress | None = None,
            max_images: int | None = None) -> tuple[list[int], list[dict]]:
    """Detections for every image of ``dataset`` (this process's share under torchrun, gathered after), or for
    its first ``max_images`` images.

    Each batch holds images of one canvas (padded size) only, so an image's detections do not depend on the batch
    size or on the other images of the split.

    Returns ``(image_ids, outputs)``: per image ``{"boxes": (N, 4) xyxy original pixels, "scores", "labels"}``
    on the CPU, all images on every process, in batch order.
    """
    progress = progress or NullProgress()
    device = ctx.device
    was_training = detector.training
    detector.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    positions = range(ctx.rank, count, ctx.world_size)
    batches = whole_canvas_batches([(p, "orig") for p in positions], lambda k: dataset.geometry_of(*k).padded_size,
                                   batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda")
    ids, outputs = [], []
    progress.start(share("evaluate", ctx.world_size), len(positions), unit="img")
    for batch in loader:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            dets = detector(batch.images, batch.image_sizes, detect=True).detections
        for image_id, geom, det in zip(batch.image_ids, batch.geometries, dets):
            ids.append(image_id)
            outputs.append({"boxes": invert_boxes(det["boxes"].float().cpu(), geom),
                            "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
        progress.update(len(batch.image_ids))
    progress.stop()
    detector.train(was_training)
    gathered = all_gather_objects(ctx, (ids, outputs))
    all_ids = [i for g in gathered for i in g[0]]
    all_out = [o for g in gathered for o in g[1]]
    return all_ids, all_out


def prepare_evaluation(dataset: CocoViews, label_to_category=None, max_images: int | None = None) -> CocoEvaluator:
    """The evaluator of ``dataset``'s ground truth, checked as scoring will read it (the annotations, the label map
    ``label_to_category``, default the dataset's own, and the presence of the first ``max_images`` image files), so
    that what would stop an evaluation stops the work before it starts."""
    mapping = dataset.index.label_to_category if label_to_category is None else label_to_category
    evaluator = CocoEvaluator(load_coco(dataset.index.path), mapping)
    dataset.check_files(max_images)
    return evaluator


def evaluate_detector(detector: Detector, dataset: CocoViews, ctx: DistContext, batch_size: int = 8,
                      workers: int = 2, amp: bool = True, detections_out: str | Path | None = None,
                      label_to_category=None, progress: Progress | None = None,
                      max_images: int | None = None, backend: str = "pycocotools") -> dict[str, float | None]:
    """COCO box mAP of ``detector`` on ``dataset`` (keys ``AP, AP50, AP75, APs, APm, APl``, fractions).

    ``label_to_category`` maps the detector's labels to category ids (default: the dataset's own map);
    ``max_images`` scores only the first N images (in dataset order), against their own ground truth;
    ``backend`` is ``evaluate_detections``'. A size range without ground truth is ``None`` (undefined).
    """
    evaluator = prepare_evaluation(dataset, label_to_category, max_images)
    ids, outputs = predict(detector, dataset, ctx, batch_size, workers, amp, progress, max_images)
    evaluator.process(ids, outputs)
    metrics = evaluator.evaluate(backend)
    if detections_out is not None and ctx.is_main:
        evaluator.write_results(detections_out)
    return metrics
