"""The cache part of a recipe: what `frs teacher-cache` writes and how."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CacheConfig:
    # cached views per image: "orig", "hflip" at geometry.min_size, or at another short side: "orig@640", "hflip@640"
    # (multi-scale training: the same flips at every short side of train.min_sizes, checked by teacher-cache and
    # distill --cache; distill draws one view per image and epoch)
    views: tuple[str, ...] = ("orig", "hflip")
    split: str = "train"  # which split to cache: "train" or "val"; its folder is data.train / data.val
    # storage type of the features; int8/int6/int5/int4: per-view per-channel symmetric quantisation with
    # float32 scales, int6/int5/int4 packed (8 channels in 6/5/4 bytes; channels must be a multiple of 8)
    dtype: Literal["float16", "bfloat16", "float32", "int8", "int6", "int5", "int4"] = "float16"
    codec: Literal["none", "zstd", "blosc"] = "none"  # chunk compressor (fp16 features compress little)
    batch_size: int = 8  # teacher batch (images of one padded size only)
    workers: int = 4  # image-decoding worker processes
    # processes that checksum and write the batches (0: threads in the main process); "auto": half the host's
    # cores per GPU process, at most 8 (see ``writer_processes``)
    write_processes: int | Literal["auto"] = "auto"
    # on CUDA, loader workers only decode and the GPU resizes and flips (the same float32 bilinear; a rounding
    # tie can land one grey level apart); false: the CPU pipeline's pixels, bit for bit, at CPU speed
    resize_on_gpu: bool = True
    amp: bool = True  # run the teacher in bf16 autocast on CUDA (features are stored in `dtype`)
    # on CUDA: the teacher's weights and input in NHWC (cuDNN's bf16 kernels then convert nothing); the features
    # agree with the NCHW pass to within bf16 rounding
    channels_last: bool = True
    cuda_graphs: bool = True  # on CUDA: replay the teacher and the encoding as one CUDA graph per batch shape
    preload_mb: int = 2048  # distill reads a cache up to this size into memory once (0: always read per view)
    check_teacher_images: int = 0  # before caching, score the teacher on the first N val images (0: no check)
    min_teacher_map: float = 0.01  # ...and refuse to cache when its COCO AP (0..1) is below this

    def __post_init__(self):
        from frs_cli.data.geometry import parse_view
        from frs_cli.errors import ConfigError, check_range

        for v in self.views:
            parse_view(v, "recipe key 'cache.views'")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"recipe key 'cache.views': expected a non-empty list without repeats, got "
                              f"{list(self.views)}")
        check_range("cache", "check_teacher_images", self.check_teacher_images, 0)
        if 1 < self.min_teacher_map <= 100:  # AP as the tables print it, in percent
            raise ConfigError(f"recipe key 'cache.min_teacher_map': expected a COCO AP as a fraction in [0, 1], got "
                              f"{self.min_teacher_map}", hint=f"{self.min_teacher_map:g} AP is "
                                                          f"{self.min_teacher_map / 100:g}")
        check_range("cache", "min_teacher_map", self.min_teacher_map, 0, 1)
        check_range("cache", "batch_size", self.batch_size, 1)
        check_range("cache", "workers", self.workers, 0)
        if self.write_processes != "auto":
            check_range("cache", "write_processes", self.write_processes, 0)

    def check_training_scales(self, min_sizes, geometry) -> None:
        """ConfigError unless the views are the student's training views with both flips or one: the same flips at
        every short side of ``min_sizes`` (``train.min_sizes``; empty: ``geometry.min_size``) and no other side.
        Distillation draws one cached view per image and epoch, so only then are the short side and the flip drawn
        independently, the short side uniformly, as in ``frs train`` and ``distill --online`` (the paper's FCOS:
        ``orig``, ``hflip``, ``orig@640``, ``hflip@640``)."""
        from frs_cli.data.geometry import parse_view, view_name, view_short_side
        from frs_cli.errors import ConfigError

        sizes = sorted(set(min_sizes or (geometry.min_size,)))
        flips = [f for f in ("orig", "hflip") if any(parse_view(v)[0] == f for v in self.views)]
        wanted = [view_name(f, s, geometry) for s in sorted(sizes, key=lambda s: (s != geometry.min_size, s))
                  for f in flips]
        if sorted(self.views) != sorted(wanted):
            cached = sorted({view_short_side(v, geometry) for v in self.views})
            raise ConfigError(f"recipe key 'cache.views': expected {' and '.join(flips)} at each of the student's "
                              f"training short sides {sizes} (train.min_sizes, or geometry.min_size), got "
                              f"{list(self.views)} (short sides {cached})",
                              hint=f"set cache.views = {wanted}; a cache holds the views it was written with, so "
                                   "distilling at other sides needs a cache of those views (frs teacher-cache)")

    def writer_processes(self, local_processes: int = 1, cores: int | None = None) -> int:
        """The writer processes each of ``local_processes`` teacher-cache processes on this host starts: the
        number set, or for "auto" half of ``cores`` (default: this host's) shared among them, at least 1 and at
        most ``AUTO_WRITERS_MAX``."""
        if self.write_processes != "auto":
            return self.write_processes
        cores = cores or os.cpu_count() or 2
        return max(1, min(AUTO_WRITERS_MAX, cores // (2 * max(1, local_processes))))


# at most this many writer processes for "auto": on one H200 with 16 host cores, 8 kept R50-FPN v2 int8 at
# 0.94-0.96x its inference rate in the steady state, where 4 gave 0.70-0.86x (docs/BENCHMARKS.md, session 11); on
# an H100 with 16 cores, 12 and 16 made the whole write slower than 8 did (0.92 and 0.90x against 0.95x, session 48)
AUTO_WRITERS_MAX = 8
