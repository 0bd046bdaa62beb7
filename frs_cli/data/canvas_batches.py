"""Training batches of one canvas: the epoch's views grouped by their padded size (aspect-ratio grouping).

A batch pads its images to the largest of them, and the teacher side of distillation runs once per canvas in a
batch (``frs_cli.train.canvas``). When every batch holds one canvas, the student's batch carries no padding
beyond each view's own stride multiple and the teacher (or the cached head) runs once per batch. Detection
libraries group batches by aspect ratio for the same reason; the cache's size buckets are these groups.

The epoch's order is ``ViewSampler``'s: the same seed, epoch, per-rank split and views. Its items stream in that
order into one queue per canvas; a queue that reaches the batch size is yielded as a batch and starts again. At
the epoch's end the leftovers (fewer than a batch in each queue) are chained queue by queue, in the order the
canvases first appeared in the epoch, and cut into full batches, which may mix canvases; the last partial
batch is dropped. An epoch therefore has exactly ``len(items) // batch_size`` batches, as plain batching gives
(the LR schedule counts on it), and on a dataset of one canvas the batches are plain batching's, key for key.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Iterator, Mapping

import torch

from frs_cli.data.coco import ViewSampler
from frs_cli.errors import DataError

__all__ = ["CanvasBatchSampler", "RunBatches", "canvas_batches", "view_canvases", "whole_canvas_batches"]

Key = tuple[int, str]  # (position, view), a CocoViews index


def view_canvases(dataset, views: Iterable[str]) -> dict[Key, tuple[int, int]]:
    """``{(position, view): (padded_h, padded_w)}`` for every image of ``dataset`` in each of ``views``.

    ``dataset.geometry_of(position, view)`` gives each view's geometry from the annotation sizes alone (no image
    is decoded). Computed once per dataset: about 3 µs a key on the development VM's CPU, 0.7 s for COCO's
    118 000 images in two views.
    """
    unique = tuple(dict.fromkeys(views))
    return {(p, v): dataset.geometry_of(p, v).padded_size for p in range(len(dataset)) for v in unique}


def canvas_batches(items: Iterable[Key], canvas_of, batch_size: int) -> list[list[Key]]:
    """``items`` in order -> full batches, each of one canvas but those cut from the leftovers (module docstring).

    ``canvas_of(key)`` is any hashable label of the key's canvas; ``len(result) == len(items) // batch_size``.
    """
    queues: dict[Hashable, list[Key]] = {}  # insertion order: the order the canvases first appeared
    batches: list[list[Key]] = []
    for key in items:
        queue = queues.setdefault(canvas_of(key), [])
        queue.append(key)
        if len(queue) == batch_size:
            batches.append(queue.copy())
            queue.clear()
    leftovers = [key for queue in queues.values() for key in queue]
    full = len(leftovers) - len(leftovers) % batch_size  # the partial tail is dropped, as drop_last does
    batches.extend(leftovers[i : i + batch_size] for i in range(0, full, batch_size))
    return batches


def whole_canvas_batches(items: Iterable[Key], canvas_of, batch_size: int) -> list[list[Key]]:
    """Every key of ``items`` once, in batches of one canvas each (up to ``batch_size`` keys; per canvas, in the
    order of ``items``, its last batch partial): what evaluation runs, so that each image is padded to its own
    canvas alone and its detections do not depend on the batch size or on the other images of the split."""
    queues: dict[Hashable, list[Key]] = {}
    for key in items:
        queues.setdefault(canvas_of(key), []).append(key)
    return [queue[i : i + batch_size] for queue in queues.values() for i in range(0, len(queue), batch_size)]


class CanvasBatchSampler(torch.utils.data.Sampler):
    """Lists of ``(position, view)`` keys for a DataLoader's ``batch_sampler``, one canvas per batch.

    Args:
        sampler: the epoch's item order (seed, epoch, rank split, views); this object owns its ``set_epoch``.
        batch_size: keys per batch (per process).
        canvases: each key's canvas (``view_canvases``); ``None`` treats every key as one canvas, which gives
            plain batching: consecutive runs of ``batch_size`` items, the last partial one dropped.

    ``set_epoch(epoch, start)`` keeps ``ViewSampler``'s meaning: ``start`` items of this rank's epoch are done
    (the trainer passes steps done × batch size), so the batches yielded are the epoch's from batch
    ``start // batch_size`` on, and a run resumed mid-epoch sees exactly the batches it had not seen.
    """

    def __init__(self, sampler: ViewSampler, batch_size: int, canvases: Mapping[Key, Hashable] | None = None):
        if batch_size < 1:
            raise DataError(f"batch size: expected an integer >= 1, got {batch_size}")
        if canvases is not None:
            missing = next(((p, v) for p in range(sampler.num_images) for v in sampler.views
                            if (p, v) not in canvases), None)
            if missing is not None:
                raise DataError(f"canvases: expected one for every view the sampler yields, {missing} has none")
        self.sampler = sampler
        self.batch_size = batch_size
        self.canvases = canvases
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.whole_batches(start)
        self.epoch = epoch
        self.start = start

    def whole_batches(self, start: int) -> int:
        """The batches ``start`` items make; DataError unless they make whole ones."""
        if start % self.batch_size:
            raise DataError(f"start: expected a whole number of batches of {self.batch_size} items, got {start}")
        return start // self.batch_size

    def epoch_batches(self) -> list[list[Key]]:
        """Every batch of this rank's epoch, from its first (``start`` aside)."""
        return self.batches_of(self.epoch)

    def batches_of(self, epoch: int) -> list[list[Key]]:
        """Every batch of this rank's epoch ``epoch``, from its first; neither this object's epoch nor its
        sampler's changes (``RunBatches`` reads epochs ahead of the one training)."""
        sampler = copy.copy(self.sampler)
        sampler.set_epoch(epoch)
        canvas_of = (lambda key: None) if self.canvases is None else self.canvases.__getitem__
        return canvas_batches(sampler, canvas_of, self.batch_size)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.epoch_batches()[self.start // self.batch_size :])


class RunBatches(torch.utils.data.Sampler):
    """A run's batches as one stream for a DataLoader's ``batch_sampler``: ``batches``'s epoch ``epoch`` from item
    ``start`` on (``CanvasBatchSampler.set_epoch``'s meaning), then each later epoch whole, up to ``epochs``.

    One iteration of one DataLoader then serves the whole run: its workers start once, and they load the first
    batches of the next epoch while the last steps of this one run and the epoch's hooks (checkpoint, evaluation)
    follow, instead of the loader draining at every epoch's end and the next epoch's first step waiting for it.
    """

    def __init__(self, batches: CanvasBatchSampler, epoch: int, start: int, epochs: int):
        self.batches, self.epoch, self.epochs = batches, epoch, max(epochs, epoch + 1)
        self.skip = batches.whole_batches(start)  # batches of the first epoch already done

    def __len__(self) -> int:
        return (self.epochs - self.epoch) * len(self.batches) - self.skip

    def __iter__(self) -> Iterator[list[Key]]:
        for epoch in range(self.epoch, self.epochs):
            yield from self.batches.batches_of(epoch)[self.skip if epoch == self.epoch else 0 :]
